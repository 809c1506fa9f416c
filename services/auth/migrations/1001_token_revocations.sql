-- What retires access tokens before they expire. Every token carries its account's
-- token_version (`ver`) and its sign-in (`sid`, the refresh-token family). A role or password
-- change raises the version; a sign-out ends the sign-in. Each is recorded here, and every
-- service's verifier reads the entries of the last access-token lifetime (`GET
-- /api/v1/auth/revocations`) and refuses what they retire.
ALTER TABLE users ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0 CHECK (token_version >= 0);

CREATE TABLE token_revocations (
    id           TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users (id),
    -- Tokens of the account with a lower version are refused.
    min_version  BIGINT  NOT NULL CHECK (min_version >= 0),
    -- Set when one sign-in was ended: its tokens are refused whatever their version.
    session_id   TEXT,
    created_at   BIGINT  NOT NULL
);
CREATE INDEX token_revocations_created ON token_revocations (created_at);
