"""target-everflow: Segment conversions to Everflow, exactly once."""
