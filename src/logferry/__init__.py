"""logferry: deliver log lines into customers' own AWS accounts through a cross-account role."""

__version__ = "0.1.0"
