"""Converters of the paper's datasets (Synapse, ACDC, MSSEG-2016) into nnU-Net v2's raw format.

One module per dataset (:mod:`~dataset_conversion.synapse`, :mod:`~dataset_conversion.acdc`,
:mod:`~dataset_conversion.msseg`), each with ``convert(src, raw_root, *, dataset_id, ...) -> Path`` and a
``main(argv=None) -> int``. Their default id, folder name and label names come from
:mod:`nnunet_topkdice.paper_datasets`; the shared reading, checking and writing is in
:mod:`~dataset_conversion.common`, the command-line body in :mod:`~dataset_conversion.runner` and the
argument parsers in :mod:`~dataset_conversion.cli`.
"""
