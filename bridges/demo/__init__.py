"""lsmae demo: the whole chain offline on the embedded checkpoint, and its generated data sets."""
