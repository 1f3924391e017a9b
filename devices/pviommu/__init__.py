"""The Xen PV-IOMMU model (``--device pv-iommu``): guest-managed contexts over the host."""

from devices.pviommu.device import PvIommu

__all__ = ["PvIommu"]
