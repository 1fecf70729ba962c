-- One Conduit community: the tables every schema or database tenant gets.
-- Row tenants share the same tables in schema `conduit` (see `prepare_database`),
-- each keyed by (tenant_id, id).
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    email         text NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 254),
    username      text NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 64),
    password_hash text NOT NULL,
    bio           text,
    image         text
);
CREATE TABLE follows (
    id          bigserial PRIMARY KEY,
    follower_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    followee_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    UNIQUE (follower_id, followee_id)
);
CREATE TABLE articles (
    id          bigserial PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    title       text NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    description text NOT NULL,
    body        text NOT NULL,
    author_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX articles_newest ON articles (created_at DESC);
CREATE INDEX articles_author ON articles (author_id);
CREATE TABLE article_tags (
    id         bigserial PRIMARY KEY,
    article_id bigint NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    tag        text NOT NULL CHECK (length(tag) BETWEEN 1 AND 64),
    UNIQUE (article_id, tag)
);
CREATE INDEX article_tags_tag ON article_tags (tag);
CREATE TABLE favorites (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    article_id bigint NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    UNIQUE (user_id, article_id)
);
CREATE INDEX favorites_article ON favorites (article_id);
CREATE TABLE comments (
    id         bigserial PRIMARY KEY,
    article_id bigint NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    author_id  bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body       text NOT NULL CHECK (length(body) >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX comments_article ON comments (article_id);
