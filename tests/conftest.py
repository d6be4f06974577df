import sys
from pathlib import Path

# Test helpers (speech synthesis) live next to the tests.
sys.path.insert(0, str(Path(__file__).parent))
