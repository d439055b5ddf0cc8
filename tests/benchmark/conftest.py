"""The benchmark modules import each other as top-level modules (run.py puts this folder on sys.path)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
