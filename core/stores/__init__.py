"""Stores: one contract (`base.Store`), one module per backend."""
