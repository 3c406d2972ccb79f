import warnings

import torch

# Tracing/compiling tests warn about constant shapes by design; keep the output readable.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
