"""Building blocks of the synthetic DexYCB-format generator (`amt.data.synthetic`)."""
