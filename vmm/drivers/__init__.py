"""Guest-side drivers of the harness: what a guest OS does to each IOMMU model."""
