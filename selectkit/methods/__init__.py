"""Pure functions per selection method (losses in, decisions out), tested on hand-computed values."""
