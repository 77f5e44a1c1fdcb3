"""lsmae bench zoo and cli: fetch/verify/convert throughput, and look-up commands vs import torch."""
