"""The tracker's end-to-end rate: hand-off stream in, live state and events out."""
