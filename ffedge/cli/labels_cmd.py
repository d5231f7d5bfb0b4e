"""`ffedge labels`: draw the label patterns of an encoding (placeholder, filled in by the labels work)."""
