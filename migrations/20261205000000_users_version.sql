-- A row version, for ETags and If-Match (src/README.md, "Conditional requests"). Every write
-- sets a new one from UUID_SHORT(): unique on this server and never handed out again, so a
-- user deleted and created anew never gets back a version a client may still hold (a counter
-- from 1 would, and an old If-Match would then overwrite the new user). Rows from before this
-- migration start at 1, which UUID_SHORT() never returns. Plain ALTER (no IF NOT EXISTS): the
-- same SQL runs on MariaDB and MySQL 8.4.
ALTER TABLE users ADD COLUMN version BIGINT UNSIGNED NOT NULL DEFAULT 1;
