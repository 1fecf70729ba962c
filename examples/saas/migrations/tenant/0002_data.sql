-- The seed design's `data` table, read by GET /api/v1/data.
CREATE TABLE data (
    id         bigserial PRIMARY KEY,
    value      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
