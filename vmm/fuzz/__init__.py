"""Fuzzing the models and the socket front door (``vmm fuzz``; issue 8).

The pieces, each in its own module:

- ``program``  — steps, programs, and the choice sources generators draw from;
- ``targets``  — what is fuzzed: one ``ModelTarget`` per model (SMMUv3, VT-d, PV-IOMMU);
- ``world``    — the executor: a fresh guest session through the sans-IO connection, and the
  oracles checked after every step (``oracles``, ``observe``);
- ``engine``   — the built-in behaviour-guided loop; ``atheris_main`` — the atheris one;
- ``protocol`` — the live-daemon fuzzer of the socket protocol;
- ``minimize``, ``reproducer`` — delta debugging and the files that replay a failure;
- ``cli``      — the command.

This package imports nothing heavy itself: ``vmm`` builds its command line from ``cli``.
"""

TARGET_NAMES = ("smmuv3", "vtd", "pv-iommu", "protocol")
"""What ``vmm fuzz --target`` takes (``targets.ALL_TARGETS`` is the same list)."""
