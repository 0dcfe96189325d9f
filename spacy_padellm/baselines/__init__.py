"""The autoregressive baselines PaDeLLM is compared with (AutoReg_Struct and AutoReg_Aug in the paper)."""
