"""viommu: the device-model process, guest memory, the harness and the CLI."""

__version__ = "0.1.0"
