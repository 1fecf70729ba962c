-- Row tenants' communities: the tables of migrations/tenant in schema `conduit`,
-- shared, each keyed by (tenant_id, id) with tenant_id in every unique and foreign
-- key (those checks bypass row-level security, so they must include the tenant).
-- Idempotent: run at every start, by `conduit::prepare_database`.
DO $$ BEGIN
    -- Only when missing: an app user without CREATEROLE may use an existing one.
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'conduit_row_tenant') THEN
        CREATE ROLE conduit_row_tenant NOLOGIN NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
CREATE SCHEMA IF NOT EXISTS conduit;
CREATE TABLE IF NOT EXISTS conduit.users (
    id            bigserial,
    tenant_id     text NOT NULL DEFAULT current_setting('tenantry.tenant_id'),
    email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    username      text NOT NULL CHECK (length(username) BETWEEN 1 AND 64),
    password_hash text NOT NULL,
    bio           text,
    image         text,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, email),
    UNIQUE (tenant_id, username)
);
CREATE TABLE IF NOT EXISTS conduit.follows (
    id          bigserial,
    tenant_id   text NOT NULL DEFAULT current_setting('tenantry.tenant_id'),
    follower_id bigint NOT NULL,
    followee_id bigint NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, follower_id, followee_id),
    FOREIGN KEY (tenant_id, follower_id) REFERENCES conduit.users (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, followee_id) REFERENCES conduit.users (tenant_id, id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS conduit.articles (
    id          bigserial,
    tenant_id   text NOT NULL DEFAULT current_setting('tenantry.tenant_id'),
    slug        text NOT NULL,
    title       text NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    description text NOT NULL,
    body        text NOT NULL,
    author_id   bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, slug),
    FOREIGN KEY (tenant_id, author_id) REFERENCES conduit.users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS articles_newest ON conduit.articles (tenant_id, created_at DESC);
CREATE INDEX IF NOT EXISTS articles_author ON conduit.articles (tenant_id, author_id);
CREATE TABLE IF NOT EXISTS conduit.article_tags (
    id         bigserial,
    tenant_id  text NOT NULL DEFAULT current_setting('tenantry.tenant_id'),
    article_id bigint NOT NULL,
    tag        text NOT NULL CHECK (length(tag) BETWEEN 1 AND 64),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, article_id, tag),
    FOREIGN KEY (tenant_id, article_id) REFERENCES conduit.articles (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS article_tags_tag ON conduit.article_tags (tenant_id, tag);
CREATE TABLE IF NOT EXISTS conduit.favorites (
    id         bigserial,
    tenant_id  text NOT NULL DEFAULT current_setting('tenantry.tenant_id'),
    user_id    bigint NOT NULL,
    article_id bigint NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, user_id, article_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES conduit.users (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, article_id) REFERENCES conduit.articles (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS favorites_article ON conduit.favorites (tenant_id, article_id);
CREATE TABLE IF NOT EXISTS conduit.comments (
    id         bigserial,
    tenant_id  text NOT NULL DEFAULT current_setting('tenantry.tenant_id'),
    article_id bigint NOT NULL,
    author_id  bigint NOT NULL,
    body       text NOT NULL CHECK (length(body) >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, article_id) REFERENCES conduit.articles (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, author_id) REFERENCES conduit.users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS comments_article ON conduit.comments (tenant_id, article_id);
GRANT USAGE ON SCHEMA conduit TO conduit_row_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA conduit TO conduit_row_tenant;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA conduit TO conduit_row_tenant;
-- Lets a non-superuser app user switch to the role (a superuser may anyway).
DO $$ BEGIN
    GRANT conduit_row_tenant TO CURRENT_USER;
EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN NULL;
END $$;
