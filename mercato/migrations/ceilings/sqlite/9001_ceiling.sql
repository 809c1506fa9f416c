-- The one table of `mercato ceilings`: single-row commits.
CREATE TABLE ceiling (id BIGINT PRIMARY KEY, body TEXT NOT NULL);
