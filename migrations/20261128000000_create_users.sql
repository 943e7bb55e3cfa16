-- Binary collation: a username is stored and compared exactly as sent
-- ("John" and "john" are different names, trailing spaces are kept).
-- utf8mb4: every Unicode scalar, emoji included. No RETURNING anywhere, so the
-- same SQL runs on MariaDB >= 10.11 and MySQL 8.4.
CREATE TABLE IF NOT EXISTS users (
    userid     INT UNSIGNED NOT NULL,
    username   VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (userid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
