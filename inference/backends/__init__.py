"""Model backends behind the one-method ``Backend`` protocol (see ``base.py``).

Weights are never fetched at run time: the hub's offline switches are set here, before any
backend module imports transformers/huggingface_hub (which read them at import).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
