-- Users and their refresh tokens. Emails are stored lower-cased; tokens only as SHA-256 hashes.
CREATE TABLE users (
    id             TEXT    PRIMARY KEY,
    email          TEXT    NOT NULL UNIQUE,
    name           TEXT    NOT NULL,
    password_hash  TEXT    NOT NULL,
    role           TEXT    NOT NULL CHECK (role IN ('CUSTOMER', 'SELLER', 'ADMIN')),
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);

-- A family is one login's chain of rotated tokens; reuse of a spent token revokes the family.
CREATE TABLE refresh_tokens (
    token_hash   TEXT    PRIMARY KEY,
    family_id    TEXT    NOT NULL,
    user_id      TEXT    NOT NULL REFERENCES users (id),
    expires_at   BIGINT  NOT NULL,
    used_at      BIGINT,
    revoked_at   BIGINT,
    created_at   BIGINT  NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
