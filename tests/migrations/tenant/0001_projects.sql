CREATE TABLE projects (id bigserial PRIMARY KEY, name text NOT NULL);
