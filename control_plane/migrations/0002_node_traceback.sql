-- The traceback of a node's last failed attempt (its `error` is one line).
ALTER TABLE nodes ADD COLUMN traceback text NOT NULL DEFAULT '';
