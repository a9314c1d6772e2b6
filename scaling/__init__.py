"""scaling: train one decoder-only transformer LM and record what a scaling-law study needs."""
__version__ = "0.1.0"
