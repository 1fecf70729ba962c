//! The statements of an entity, written by the runtime from its column list.

use sqlx::postgres::PgArguments;

use super::{TenantEntity, add};
use crate::error::Error;
use crate::naming::quote_ident;
use crate::tenant::{Strategy, Tenant};

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bind {
    /// The entity's column at this index of [`TenantEntity::COLUMNS`].
    Column(usize),
    /// The handle's tenant (the tenant column).
    Tenant,
}

/// The statements of an entity and the values their placeholders take, written by
/// tenantry from the entity's columns once per type. The runtime is the one owner of
/// entity SQL: the derive lists columns and encodes one column at a time
/// ([`TenantEntity::bind_column`]), tenantry writes every statement, numbers its
/// placeholders and supplies their values in that order.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySql {
    pub(super) find: String,
    pub(super) list: String,
    pub(super) count: String,
    pub(super) insert: String,
    /// `insert` with `ON CONFLICT DO NOTHING` before its `RETURNING`.
    pub(super) insert_or_ignore: String,
    pub(super) update: String,
    pub(super) delete: String,
    pub(super) select_prefix: String,
    pub(super) count_prefix: String,
    /// ` RETURNING <every column>`.
    pub(super) returning: String,
    /// The length of the quoted table name, which ends `select_prefix` and
    /// `count_prefix` (where a binding-free read puts its schema).
    pub(super) table_len: usize,
    pub(super) insert_binds: Vec<Bind>,
    pub(super) update_binds: Vec<Bind>,
    /// The column every statement filters on (`= the handle's tenant`), if any.
    pub(super) tenant_column: Option<String>,
    /// The statements for row-strategy tenants, when the entity names a tenant column
    /// for them only (`#[tenant(row_tenant_column)]`): the same with `tenant_id = $n`.
    pub(super) rows: Option<Box<EntitySql>>,
}

impl EntitySql {
    /// The statements that read or delete, by name (`find`, `list`, `count`,
    /// `delete`), for tools that show their plans (on Citus: one router task each).
    pub fn reads(&self) -> [(&'static str, &str); 4] {
        [
            ("find", &self.find),
            ("list", &self.list),
            ("count", &self.count),
            ("delete", &self.delete),
        ]
    }

    /// The statements used for tenants of `strategy`: for row tenants those with the
    /// entity's `row_tenant_column` filter, if it has one.
    pub fn for_strategy(&self, strategy: Strategy) -> &EntitySql {
        match (&self.rows, strategy) {
            (Some(rows), Strategy::Row) => rows,
            _ => self,
        }
    }

    /// The statements used for `tenant`.
    pub(super) fn for_tenant(&self, tenant: &Tenant) -> &EntitySql {
        self.for_strategy(tenant.strategy)
    }

    /// The statements of `E`.
    pub fn of<E: TenantEntity>() -> Self {
        let mut sql = Self::build(
            E::TABLE,
            E::COLUMNS,
            E::PRIMARY_KEY,
            E::TENANT_COLUMN,
            E::GENERATED,
            false,
        );
        if E::TENANT_COLUMN.is_none()
            && let Some(column) = E::ROW_TENANT_COLUMN
        {
            sql.rows = Some(Box::new(Self::build(
                E::TABLE,
                E::COLUMNS,
                E::PRIMARY_KEY,
                Some(column),
                E::GENERATED,
                true,
            )));
        }
        sql
    }

    /// The statements over `columns`; `tenant` is the column they filter on, one of
    /// `columns` or, when `tenant_outside` (a row-only tenant column), one the
    /// entity does not read: inserts fill it, filters use it, rows do not return it.
    pub(super) fn build(
        table: &str,
        columns: &[&str],
        key: &str,
        tenant: Option<&str>,
        generated: &[&str],
        tenant_outside: bool,
    ) -> Self {
        let t = quoted_table(table);
        let cols = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let id = quote_ident(key);
        let tc = tenant.map(quote_ident);
        let select_prefix = format!("SELECT {cols} FROM {t}");
        let count_prefix = format!("SELECT count(*) FROM {t}");
        let keyed = |n: usize| match &tc {
            Some(tc) => format!("{id} = ${n} AND {tc} = ${}", n + 1),
            None => format!("{id} = ${n}"),
        };
        let (list, count) = match &tc {
            Some(tc) => (
                format!("{select_prefix} WHERE {tc} = $1 ORDER BY {id} LIMIT $2 OFFSET $3"),
                format!("{count_prefix} WHERE {tc} = $1"),
            ),
            None => (
                format!("{select_prefix} ORDER BY {id} LIMIT $1 OFFSET $2"),
                count_prefix.clone(),
            ),
        };
        let bind_of = |(i, c): (usize, &&str)| {
            if Some(*c) == tenant {
                Bind::Tenant
            } else {
                Bind::Column(i)
            }
        };
        // Insert every column the database does not generate; the tenant column gets
        // the handle's tenant.
        let inserted: Vec<(usize, &&str)> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !generated.contains(c))
            .collect();
        let mut insert_names: Vec<String> = inserted.iter().map(|(_, c)| quote_ident(c)).collect();
        let mut insert_binds: Vec<Bind> = inserted.iter().copied().map(bind_of).collect();
        if let (true, Some(tc)) = (tenant_outside, &tc) {
            insert_names.push(tc.clone());
            insert_binds.push(Bind::Tenant);
        }
        let insert_head = if insert_names.is_empty() {
            format!("INSERT INTO {t} DEFAULT VALUES")
        } else {
            format!(
                "INSERT INTO {t} ({}) VALUES ({})",
                insert_names.join(", "),
                (1..=insert_names.len())
                    .map(|n| format!("${n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let insert = format!("{insert_head} RETURNING {cols}");
        let insert_or_ignore = format!("{insert_head} ON CONFLICT DO NOTHING RETURNING {cols}");
        // Update every column but the key, the tenant column and generated ones.
        let set: Vec<(usize, &&str)> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != key && Some(**c) != tenant && !generated.contains(c))
            .collect();
        let set_sql = if set.is_empty() {
            format!("{id} = {id}")
        } else {
            set.iter()
                .enumerate()
                .map(|(n, (_, c))| format!("{} = ${}", quote_ident(c), n + 1))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let key_index = columns.iter().position(|c| *c == key).unwrap_or(0);
        let mut update_binds: Vec<Bind> = set.iter().copied().map(bind_of).collect();
        update_binds.push(Bind::Column(key_index));
        if tenant.is_some() {
            update_binds.push(Bind::Tenant);
        }
        Self {
            find: format!("{select_prefix} WHERE {}", keyed(1)),
            list,
            count,
            insert,
            insert_or_ignore,
            update: format!(
                "UPDATE {t} SET {set_sql} WHERE {} RETURNING {cols}",
                keyed(set.len() + 1)
            ),
            delete: format!("DELETE FROM {t} WHERE {}", keyed(1)),
            select_prefix,
            count_prefix,
            returning: format!(" RETURNING {cols}"),
            table_len: t.len(),
            insert_binds,
            update_binds,
            tenant_column: tenant.map(str::to_owned),
            rows: None,
        }
    }

    /// The text of a read (one that starts with `select_prefix`, or `count_prefix` if
    /// `count`) for a binding-free read in `schema` (quoted), or as it is for a bound
    /// connection. The tenant's schema version leads it: a statement prepared against
    /// one shape of the table is never used with another.
    pub(super) fn read_text(
        &self,
        text: &str,
        count: bool,
        schema: Option<&str>,
        tenant: &Tenant,
    ) -> String {
        let Some(schema) = schema else {
            return text.to_owned();
        };
        let prefix = if count {
            &self.count_prefix
        } else {
            &self.select_prefix
        };
        debug_assert!(text.starts_with(prefix.as_str()));
        let at = prefix.len() - self.table_len;
        let version = tenant
            .schema_version
            .map_or("-".to_owned(), |v| v.to_string());
        format!("/* v{version} */ {}{schema}.{}", &text[..at], &text[at..])
    }

    /// The arguments `binds` take from a value (`column(index, args)` adds column
    /// `index`) and `tenant`, in placeholder order.
    pub(super) fn arguments(
        column: impl Fn(usize, &mut PgArguments) -> Result<(), Error>,
        tenant: &Tenant,
        binds: &[Bind],
    ) -> Result<PgArguments, Error> {
        let mut args = PgArguments::default();
        for bind in binds {
            match *bind {
                Bind::Column(i) => column(i, &mut args)?,
                Bind::Tenant => add(&mut args, tenant.id.as_str())?,
            }
        }
        Ok(args)
    }
}

/// `table` or `schema.table`, each part quoted.
pub(super) fn quoted_table(table: &str) -> String {
    table
        .split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_entity_statements() {
        let s = EntitySql::build("projects", &["id", "title"], "id", None, &["id"], false);
        assert_eq!(
            s.find,
            r#"SELECT "id", "title" FROM "projects" WHERE "id" = $1"#
        );
        assert_eq!(
            s.list,
            r#"SELECT "id", "title" FROM "projects" ORDER BY "id" LIMIT $1 OFFSET $2"#
        );
        assert_eq!(
            s.insert,
            r#"INSERT INTO "projects" ("title") VALUES ($1) RETURNING "id", "title""#
        );
        assert_eq!(s.insert_binds, [Bind::Column(1)]);
        assert_eq!(
            s.update,
            r#"UPDATE "projects" SET "title" = $1 WHERE "id" = $2 RETURNING "id", "title""#
        );
        assert_eq!(s.update_binds, [Bind::Column(1), Bind::Column(0)]);
        assert_eq!(s.delete, r#"DELETE FROM "projects" WHERE "id" = $1"#);
        assert_eq!(s.count, r#"SELECT count(*) FROM "projects""#);
    }

    #[test]
    fn row_entity_statements_carry_the_tenant_filter() {
        let s = EntitySql::build(
            "app.items",
            &["id", "tenant_id", "label"],
            "id",
            Some("tenant_id"),
            &[],
            false,
        );
        assert_eq!(
            s.find,
            r#"SELECT "id", "tenant_id", "label" FROM "app"."items" WHERE "id" = $1 AND "tenant_id" = $2"#
        );
        assert_eq!(
            s.list,
            r#"SELECT "id", "tenant_id", "label" FROM "app"."items" WHERE "tenant_id" = $1 ORDER BY "id" LIMIT $2 OFFSET $3"#
        );
        assert_eq!(
            s.count,
            r#"SELECT count(*) FROM "app"."items" WHERE "tenant_id" = $1"#
        );
        assert_eq!(
            s.insert,
            r#"INSERT INTO "app"."items" ("id", "tenant_id", "label") VALUES ($1, $2, $3) RETURNING "id", "tenant_id", "label""#
        );
        assert_eq!(
            s.insert_binds,
            [Bind::Column(0), Bind::Tenant, Bind::Column(2)]
        );
        assert_eq!(
            s.update,
            r#"UPDATE "app"."items" SET "label" = $1 WHERE "id" = $2 AND "tenant_id" = $3 RETURNING "id", "tenant_id", "label""#
        );
        assert_eq!(
            s.update_binds,
            [Bind::Column(2), Bind::Column(0), Bind::Tenant]
        );
        assert_eq!(
            s.delete,
            r#"DELETE FROM "app"."items" WHERE "id" = $1 AND "tenant_id" = $2"#
        );
    }

    #[test]
    fn an_entity_of_generated_columns_inserts_defaults() {
        let s = EntitySql::build("stamps", &["id", "at"], "id", None, &["id", "at"], false);
        assert_eq!(
            s.insert,
            r#"INSERT INTO "stamps" DEFAULT VALUES RETURNING "id", "at""#
        );
        assert!(s.insert_binds.is_empty());
        assert_eq!(
            s.update,
            r#"UPDATE "stamps" SET "id" = "id" WHERE "id" = $1 RETURNING "id", "at""#
        );
    }

    #[test]
    fn a_row_only_tenant_column_is_filled_and_filtered_but_not_read() {
        let s = EntitySql::build(
            "projects",
            &["id", "name"],
            "id",
            Some("tenant_id"),
            &["id"],
            true,
        );
        assert_eq!(
            s.find,
            r#"SELECT "id", "name" FROM "projects" WHERE "id" = $1 AND "tenant_id" = $2"#
        );
        assert_eq!(
            s.list,
            r#"SELECT "id", "name" FROM "projects" WHERE "tenant_id" = $1 ORDER BY "id" LIMIT $2 OFFSET $3"#
        );
        assert_eq!(
            s.insert,
            r#"INSERT INTO "projects" ("name", "tenant_id") VALUES ($1, $2) RETURNING "id", "name""#
        );
        assert_eq!(s.insert_binds, [Bind::Column(1), Bind::Tenant]);
        assert_eq!(
            s.update,
            r#"UPDATE "projects" SET "name" = $1 WHERE "id" = $2 AND "tenant_id" = $3 RETURNING "id", "name""#
        );
        assert_eq!(
            s.update_binds,
            [Bind::Column(1), Bind::Column(0), Bind::Tenant]
        );
        assert_eq!(
            s.delete,
            r#"DELETE FROM "projects" WHERE "id" = $1 AND "tenant_id" = $2"#
        );
        assert_eq!(s.tenant_column.as_deref(), Some("tenant_id"));
    }
}
