//! Tenant-aware models: the trait behind `#[derive(TenantEntity)]`, the tenant-bound
//! handle its operations require, and a filter builder that binds every value.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use std::marker::PhantomData;

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Encode, PgConnection, Postgres, Type};

use crate::column::{Assign, Col, ColumnType, Cond, Op, Order};
use crate::db::{TenantDb, TenantTx};
use crate::error::Error;
use crate::naming::quote_ident;
use crate::page::{Page, PageRequest};
use crate::tenant::{Strategy, Tenant};

mod sealed {
    /// Proof that a caller is tenantry itself: the handle methods that reach the
    /// connection take one, and only this crate can make it.
    pub struct Token(pub(crate) ());
    pub trait Sealed {}
    impl Sealed for crate::db::TenantDb {}
    impl Sealed for crate::db::TenantTx {}
}

/// A database handle bound to one tenant: [`TenantDb`] or [`TenantTx`].
///
/// Tenant-aware operations take `&mut impl TenantHandle`, never a pool or a plain
/// connection, so running one without a tenant scope does not compile. The trait is
/// sealed: only tenantry makes tenant-bound handles.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not bound to a tenant",
    label = "a tenant-aware operation needs a `TenantDb` or `TenantTx` here",
    note = "take `db: tenantry::TenantDb` (or `tx: tenantry::TenantTx`) as a handler argument, or get one from `TenantManager::db()`; a pool or a plain connection has no tenant scope"
)]
pub trait TenantHandle: sealed::Sealed + Send {
    /// Starts one of tenantry's own statements (which change no session state, so
    /// the connection needs no reset afterwards): takes the connection on first use
    /// and, in the transaction binding, begins the statement's transaction.
    #[doc(hidden)]
    fn begin_own(
        &mut self,
        _: sealed::Token,
    ) -> impl Future<Output = Result<bool, Error>> + Send + '_;
    /// The connection of the statement begun.
    #[doc(hidden)]
    fn connection(&mut self, _: sealed::Token) -> &mut PgConnection;
    /// Whether statements may be prepared by name (not behind a transaction pooler).
    #[doc(hidden)]
    fn persistent(&self, _: sealed::Token) -> bool;
    /// Ends the statement begun (commit or roll back its own transaction, if any).
    #[doc(hidden)]
    fn end_own(
        &mut self,
        local: bool,
        ok: bool,
        _: sealed::Token,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_;
    /// Marks the connection's state unknown after a statement failed without an
    /// answer from the server: it is checked (or closed) before reuse.
    #[doc(hidden)]
    fn suspect(&mut self, _: sealed::Token);
    /// Marks that one of tenantry's own writes ran (an insert sets sequence state; a
    /// user's trigger may change the session): the binding is set again, discarding
    /// it, before the connection serves another request, the same tenant's included.
    #[doc(hidden)]
    fn touch(&mut self, _: sealed::Token);
    /// The tenant it is bound to.
    fn bound_tenant(&self) -> &Tenant;
    /// Starts a read of `table`: like [`Self::begin_own`], and answers the quoted
    /// schema a binding-free read names (`None`: the connection is bound, and the read
    /// names the table alone).
    #[doc(hidden)]
    fn begin_read(
        &mut self,
        table: &'static str,
        _: sealed::Token,
    ) -> impl Future<Output = Result<(bool, Option<Arc<str>>), Error>> + Send + '_;
}

impl TenantHandle for TenantDb {
    fn begin_own(
        &mut self,
        _: sealed::Token,
    ) -> impl Future<Output = Result<bool, Error>> + Send + '_ {
        self.begin_statement(false)
    }
    fn connection(&mut self, _: sealed::Token) -> &mut PgConnection {
        self.statement_conn()
    }
    fn persistent(&self, _: sealed::Token) -> bool {
        TenantDb::persistent(self)
    }
    fn end_own(
        &mut self,
        local: bool,
        ok: bool,
        _: sealed::Token,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.end_statement(local, ok)
    }
    fn suspect(&mut self, _: sealed::Token) {
        self.suspect_conn();
    }
    fn touch(&mut self, _: sealed::Token) {
        self.touch_conn();
    }
    fn bound_tenant(&self) -> &Tenant {
        self.tenant()
    }
    async fn begin_read(
        &mut self,
        table: &'static str,
        _: sealed::Token,
    ) -> Result<(bool, Option<Arc<str>>), Error> {
        match TenantDb::begin_read(self, table).await? {
            Some(schema) => Ok((false, Some(schema))),
            None => Ok((self.begin_statement(false).await?, None)),
        }
    }
}

impl TenantHandle for TenantTx {
    fn begin_own(
        &mut self,
        _: sealed::Token,
    ) -> impl Future<Output = Result<bool, Error>> + Send + '_ {
        self.begin_statement(false)
    }
    fn connection(&mut self, _: sealed::Token) -> &mut PgConnection {
        self.statement_conn()
    }
    fn persistent(&self, _: sealed::Token) -> bool {
        TenantTx::persistent(self)
    }
    fn end_own(
        &mut self,
        _local: bool,
        _ok: bool,
        _: sealed::Token,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        std::future::ready(Ok(()))
    }
    fn suspect(&mut self, _: sealed::Token) {
        self.suspect_conn();
    }
    fn touch(&mut self, _: sealed::Token) {
        self.touch_conn();
    }
    fn bound_tenant(&self) -> &Tenant {
        self.tenant()
    }
    async fn begin_read(
        &mut self,
        _table: &'static str,
        _: sealed::Token,
    ) -> Result<(bool, Option<Arc<str>>), Error> {
        Ok((self.begin_statement(false).await?, None))
    }
}

/// Runs one of tenantry's own statements on a handle: `$query` (unnamed behind a
/// transaction pooler) through the executor method `$method`, between `begin_own`
/// and `end_own`.
macro_rules! own_statement {
    ($handle:expr, $method:ident($query:expr)) => {{
        let local = $handle.begin_own(sealed::Token(())).await?;
        run_statement!($handle, local, $method($query))
    }};
}

/// Runs a read of `$table`: `$text` is the statement's text for the schema a
/// binding-free read names (`Some`), or for a bound connection (`None`).
macro_rules! read_statement {
    ($handle:expr, $table:expr, |$schema:ident| $text:expr, $method:ident($args:expr)) => {{
        let (local, $schema) = $handle.begin_read($table, sealed::Token(())).await?;
        let text: String = $text;
        run_statement!(
            $handle,
            local,
            $method(sqlx::query_with(sqlx::AssertSqlSafe(text), $args))
        )
    }};
}

/// The tail of [`own_statement`] and [`read_statement`]: the statement begun, run.
macro_rules! run_statement {
    ($handle:expr, $local:expr, $method:ident($query:expr)) => {{
        let local = $local;
        let persistent = $handle.persistent(sealed::Token(()));
        let result = {
            let conn = $handle.connection(sealed::Token(()));
            sqlx::Executor::$method(conn, crate::db::Unnamed::new($query, persistent)).await
        };
        if let Err(e) = &result
            && !matches!(e, sqlx::Error::Database(_))
        {
            $handle.suspect(sealed::Token(()));
        }
        $handle
            .end_own(local, result.is_ok(), sealed::Token(()))
            .await?;
        result?
    }};
}

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bind {
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
    find: String,
    list: String,
    count: String,
    insert: String,
    /// `insert` with `ON CONFLICT DO NOTHING` before its `RETURNING`.
    insert_or_ignore: String,
    update: String,
    delete: String,
    select_prefix: String,
    count_prefix: String,
    /// ` RETURNING <every column>`.
    returning: String,
    /// The length of the quoted table name, which ends `select_prefix` and
    /// `count_prefix` (where a binding-free read puts its schema).
    table_len: usize,
    insert_binds: Vec<Bind>,
    update_binds: Vec<Bind>,
    /// The column every statement filters on (`= the handle's tenant`), if any.
    tenant_column: Option<String>,
    /// The statements for row-strategy tenants, when the entity names a tenant column
    /// for them only (`#[tenant(row_tenant_column)]`): the same with `tenant_id = $n`.
    rows: Option<Box<EntitySql>>,
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
    fn for_tenant(&self, tenant: &Tenant) -> &EntitySql {
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
    fn build(
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
    fn read_text(&self, text: &str, count: bool, schema: Option<&str>, tenant: &Tenant) -> String {
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
    fn arguments(
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
fn quoted_table(table: &str) -> String {
    table
        .split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// A model stored per tenant. Derive it with `#[derive(TenantEntity)]`.
///
/// Every operation takes a tenant-bound handle ([`TenantHandle`]). With a tenant
/// column (`#[tenant(tenant_column)]`) every generated statement also carries
/// `tenant_column = <the handle's tenant>`, and inserts fill that column; without
/// one, the entity relies on the handle's scoping (schema per tenant). An entity
/// that serves schema tenants and row tenants alike says so with
/// `#[tenant(row_tenant_column)]`: row tenants' statements carry the filter on the
/// shared tables' `tenant_id`, the others' do not.
///
/// ```
/// use tenantry::TenantEntity;
///
/// #[derive(TenantEntity)]
/// #[tenant(table = "projects", row_tenant_column)]
/// struct Project {
///     #[tenant(id, generated)]
///     id: i64,
///     name: String,
/// }
/// // `Project::find` for a schema tenant (in its schema):
/// //   SELECT "id", "name" FROM "projects" WHERE "id" = $1
/// // for a row tenant (in the shared tables, under row-level security too):
/// //   SELECT "id", "name" FROM "projects" WHERE "id" = $1 AND "tenant_id" = $2
/// # let sql = tenantry::__private::EntitySql::of::<Project>();
/// # let find = |s| sql.for_strategy(s).reads()[0].1.to_owned();
/// # assert_eq!(find(tenantry::Strategy::Schema), r#"SELECT "id", "name" FROM "projects" WHERE "id" = $1"#);
/// # assert_eq!(find(tenantry::Strategy::Row), r#"SELECT "id", "name" FROM "projects" WHERE "id" = $1 AND "tenant_id" = $2"#);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a tenant entity",
    label = "derive `TenantEntity` for this type",
    note = "add `#[derive(tenantry::TenantEntity)]` to the struct"
)]
pub trait TenantEntity: Sized + Send + Unpin + 'static {
    /// The primary key's type.
    type Id: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + Sync;

    /// The table.
    const TABLE: &'static str;
    /// The stored columns, in field order.
    const COLUMNS: &'static [&'static str];
    /// The primary key column.
    const PRIMARY_KEY: &'static str;
    /// The tenant column, if the table is shared between tenants.
    const TENANT_COLUMN: Option<&'static str>;
    /// The tenant column of row-strategy tenants' shared table, for an entity whose
    /// schema and database tenants' tables have none (`#[tenant(row_tenant_column)]`):
    /// for row tenants every statement then carries `<column> = <the handle's
    /// tenant>` and inserts fill it, on top of row-level security. That filter is
    /// what lets PostgreSQL use a `(tenant_id, ..)` key and Citus route the
    /// statement to the one node holding the tenant.
    const ROW_TENANT_COLUMN: Option<&'static str> = None;
    /// The columns the database fills (`#[tenant(generated)]`): left out of inserts
    /// and updates, read back after them.
    const GENERATED: &'static [&'static str];

    /// The statements, written once per type (the derive keeps them in a static).
    #[doc(hidden)]
    fn sql() -> &'static EntitySql;

    /// Decodes a row.
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error>;

    /// The primary key of this value.
    fn id(&self) -> &Self::Id;

    /// Adds the value of column `index` (of [`Self::COLUMNS`]) to `args`.
    #[doc(hidden)]
    fn bind_column(&self, index: usize, args: &mut PgArguments) -> Result<(), Error>;

    /// The row with this primary key, if the tenant has it.
    fn find<'a, H: TenantHandle>(
        handle: &'a mut H,
        id: &'a Self::Id,
    ) -> BoxFuture<'a, Result<Option<Self>, Error>> {
        Box::pin(async move {
            let sql = Self::sql().for_tenant(handle.bound_tenant());
            let args = keyed_arguments(sql, id, handle.bound_tenant())?;
            let row = read_statement!(
                handle,
                Self::TABLE,
                |schema| sql.read_text(&sql.find, false, schema.as_deref(), handle.bound_tenant()),
                fetch_optional(args)
            );
            decode_optional(row.as_ref())
        })
    }

    /// A page of the tenant's rows, ordered by primary key.
    fn list<'a, H: TenantHandle>(
        handle: &'a mut H,
        limit: i64,
        offset: i64,
    ) -> BoxFuture<'a, Result<Vec<Self>, Error>> {
        Box::pin(async move {
            if limit < 0 || offset < 0 {
                return Err(Error::Validation(
                    "`limit` and `offset` must not be negative".to_owned(),
                ));
            }
            let sql = Self::sql().for_tenant(handle.bound_tenant());
            let mut args = tenant_arguments(sql, handle.bound_tenant())?;
            add(&mut args, limit)?;
            add(&mut args, offset)?;
            let rows = read_statement!(
                handle,
                Self::TABLE,
                |schema| sql.read_text(&sql.list, false, schema.as_deref(), handle.bound_tenant()),
                fetch_all(args)
            );
            decode_all(&rows)
        })
    }

    /// How many rows the tenant has.
    fn count<H: TenantHandle>(handle: &mut H) -> BoxFuture<'_, Result<i64, Error>> {
        Box::pin(async move {
            let sql = Self::sql().for_tenant(handle.bound_tenant());
            let args = tenant_arguments(sql, handle.bound_tenant())?;
            let row = read_statement!(
                handle,
                Self::TABLE,
                |schema| sql.read_text(&sql.count, true, schema.as_deref(), handle.bound_tenant()),
                fetch_one(args)
            );
            let n: i64 = sqlx::Row::try_get(&row, 0)?;
            Ok(n)
        })
    }

    /// Inserts this value (generated columns are left to the database) and returns
    /// the stored row.
    fn insert<'a, H: TenantHandle>(
        &'a self,
        handle: &'a mut H,
    ) -> BoxFuture<'a, Result<Self, Error>>
    where
        Self: Sync,
    {
        Box::pin(insert_row(handle, |i, args| self.bind_column(i, args)))
    }

    /// [`Self::insert`] unless a unique key has the row already (`ON CONFLICT DO
    /// NOTHING`): the stored row, or `None` (see [`NewEntity::insert_or_ignore`]).
    fn insert_or_ignore<'a, H: TenantHandle>(
        &'a self,
        handle: &'a mut H,
    ) -> BoxFuture<'a, Result<Option<Self>, Error>>
    where
        Self: Sync,
    {
        Box::pin(insert_or_ignore_row(handle, |i, args| {
            self.bind_column(i, args)
        }))
    }

    /// Writes every non-key column of this value; returns the stored row, or `None`
    /// if the tenant has no row with this primary key.
    fn update<'a, H: TenantHandle>(
        &'a self,
        handle: &'a mut H,
    ) -> BoxFuture<'a, Result<Option<Self>, Error>>
    where
        Self: Sync,
    {
        Box::pin(async move {
            let sql = Self::sql().for_tenant(handle.bound_tenant());
            let args = EntitySql::arguments(
                |i, args| self.bind_column(i, args),
                handle.bound_tenant(),
                &sql.update_binds,
            )?;
            let row = own_statement!(
                handle,
                fetch_optional(sqlx::query_with(sql.update.as_str(), args))
            );
            handle.touch(sealed::Token(()));
            decode_optional(row.as_ref())
        })
    }

    /// Sets the given columns of the row with this primary key (each named and typed by
    /// a [`Col`](crate::Col): `Project::NAME.set("zeus")`); returns the stored row, or
    /// `None` if the tenant has no row with this key. With no assignment it reads
    /// the row back unchanged.
    fn update_columns<'a, H: TenantHandle>(
        handle: &'a mut H,
        id: &'a Self::Id,
        assignments: Vec<Assign<Self>>,
    ) -> BoxFuture<'a, Result<Option<Self>, Error>> {
        Box::pin(async move {
            let sql = Self::sql().for_tenant(handle.bound_tenant());
            let mut args = PgArguments::default();
            let mut set = Vec::new();
            for assign in &assignments {
                let writable = Self::COLUMNS.contains(&assign.column)
                    && assign.column != Self::PRIMARY_KEY
                    && Some(assign.column) != Self::TENANT_COLUMN
                    && !Self::GENERATED.contains(&assign.column);
                if !writable {
                    // Only the derive makes columns, and it makes these read-only.
                    return Err(Error::Internal(format!(
                        "`{}`: column `{}` cannot be set (the key, the tenant column and \
                         generated columns are read-only)",
                        Self::TABLE,
                        assign.column
                    )));
                }
            }
            for (n, assign) in assignments.into_iter().enumerate() {
                (assign.value)(&mut args)?;
                set.push(format!("{} = ${}", quote_ident(assign.column), n + 1));
            }
            let key = quote_ident(Self::PRIMARY_KEY);
            let n = set.len() + 1;
            if set.is_empty() {
                set.push(format!("{key} = {key}"));
            }
            add(&mut args, id)?;
            let mut statement = format!(
                "UPDATE {} SET {} WHERE {key} = ${n}",
                quoted_table(Self::TABLE),
                set.join(", ")
            );
            if let Some(tenant_column) = &sql.tenant_column {
                add(&mut args, handle.bound_tenant().id.as_str())?;
                statement.push_str(&format!(" AND {} = ${}", quote_ident(tenant_column), n + 1));
            }
            statement.push_str(&sql.returning);
            let row = own_statement!(
                handle,
                fetch_optional(sqlx::query_with(sqlx::AssertSqlSafe(statement), args))
            );
            handle.touch(sealed::Token(()));
            decode_optional(row.as_ref())
        })
    }

    /// Deletes the row with this primary key; `true` if the tenant had it.
    fn delete<'a, H: TenantHandle>(
        handle: &'a mut H,
        id: &'a Self::Id,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let sql = Self::sql().for_tenant(handle.bound_tenant());
            let args = keyed_arguments(sql, id, handle.bound_tenant())?;
            let done = own_statement!(handle, execute(sqlx::query_with(sql.delete.as_str(), args)));
            handle.touch(sealed::Token(()));
            Ok(done.rows_affected() > 0)
        })
    }

    /// Starts a filtered query; the tenant filter is added for you.
    fn select() -> Select<Self> {
        Select::new()
    }
}

/// The insertable part of an entity: its columns but the ones the database fills
/// (`generated`) and the tenant column (filled by tenantry). `#[tenant(new)]` on a
/// `#[derive(TenantEntity)]` struct generates one, named `New<Model>`, with the same
/// fields, visibility and serde attributes, deriving `Debug`, `Clone`, `Serialize`
/// and `Deserialize`: what a create endpoint takes as its JSON body.
///
/// ```no_run
/// use tenantry::{Error, NewEntity, TenantEntity, TenantTx, extract::Json, tenant_scoped};
///
/// #[derive(serde::Serialize, serde::Deserialize, TenantEntity)]
/// #[tenant(table = "projects", new)]
/// struct Project {
///     #[tenant(id, generated)]
///     id: i64,
///     name: String,
/// }
///
/// // A client sends `{"name":"apollo"}`; the response has the generated id.
/// #[tenant_scoped(transaction)]
/// async fn add(mut tx: TenantTx, Json(new): Json<NewProject>) -> Result<Json<Project>, Error> {
///     Ok(Json(new.insert(&mut tx).await?))
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::post(add);
/// ```
pub trait NewEntity: Sized + Send + Sync + 'static {
    /// The entity this inserts.
    type Entity: TenantEntity;

    /// Adds the value of the entity's column `index` (of its `COLUMNS`) to `args`.
    #[doc(hidden)]
    fn bind_column(&self, index: usize, args: &mut PgArguments) -> Result<(), Error>;

    /// Inserts a row with these values (the tenant column filled from the handle, the
    /// generated columns left to the database) and returns it as stored.
    fn insert<'a, H: TenantHandle>(
        &'a self,
        handle: &'a mut H,
    ) -> BoxFuture<'a, Result<Self::Entity, Error>> {
        Box::pin(insert_row(handle, |i, args| self.bind_column(i, args)))
    }

    /// Inserts a row with these values unless it would violate a unique key
    /// (`INSERT ... ON CONFLICT DO NOTHING`): the stored row, or `None` when a row
    /// with the same key values was there already (left unchanged). What a "follow",
    /// "favorite" or "tag" link that may exist already needs, without an error to
    /// catch or a transaction to roll back.
    fn insert_or_ignore<'a, H: TenantHandle>(
        &'a self,
        handle: &'a mut H,
    ) -> BoxFuture<'a, Result<Option<Self::Entity>, Error>> {
        Box::pin(insert_or_ignore_row(handle, |i, args| {
            self.bind_column(i, args)
        }))
    }
}

/// [`insert_row`] with `ON CONFLICT DO NOTHING`: `None` when a unique key had the row.
async fn insert_or_ignore_row<E: TenantEntity, H: TenantHandle>(
    handle: &mut H,
    column: impl Fn(usize, &mut PgArguments) -> Result<(), Error>,
) -> Result<Option<E>, Error> {
    let sql = E::sql().for_tenant(handle.bound_tenant());
    let args = EntitySql::arguments(column, handle.bound_tenant(), &sql.insert_binds)?;
    let row = own_statement!(
        handle,
        fetch_optional(sqlx::query_with(sql.insert_or_ignore.as_str(), args))
    );
    handle.touch(sealed::Token(()));
    decode_optional(row.as_ref())
}

/// Inserts a row of `E`, each column's value added by `column(index, args)` (the
/// tenant column filled from the handle, generated columns left to the database),
/// and returns it as stored: the insert of an entity and of its `New<Model>`.
async fn insert_row<E: TenantEntity, H: TenantHandle>(
    handle: &mut H,
    column: impl Fn(usize, &mut PgArguments) -> Result<(), Error>,
) -> Result<E, Error> {
    let sql = E::sql().for_tenant(handle.bound_tenant());
    let args = EntitySql::arguments(column, handle.bound_tenant(), &sql.insert_binds)?;
    let row = own_statement!(
        handle,
        fetch_one(sqlx::query_with(sql.insert.as_str(), args))
    );
    handle.touch(sealed::Token(()));
    E::from_row(&row).map_err(Error::from)
}

/// Decodes a row that may be missing.
fn decode_optional<E: TenantEntity>(row: Option<&PgRow>) -> Result<Option<E>, Error> {
    row.map(E::from_row).transpose().map_err(Error::from)
}

/// Decodes every row.
fn decode_all<E: TenantEntity>(rows: &[PgRow]) -> Result<Vec<E>, Error> {
    rows.iter()
        .map(E::from_row)
        .collect::<Result<_, _>>()
        .map_err(Error::from)
}

fn add<'q, T: Encode<'q, Postgres> + Type<Postgres>>(
    args: &mut PgArguments,
    value: T,
) -> Result<(), Error> {
    // A value the program built that its type cannot encode is the server's mistake.
    args.add(value)
        .map_err(|e| Error::Internal(format!("cannot encode a value: {e}")))
}

/// `$1` = the tenant (only when the statements filter on a tenant column).
fn tenant_arguments(sql: &EntitySql, tenant: &Tenant) -> Result<PgArguments, Error> {
    let mut args = PgArguments::default();
    if sql.tenant_column.is_some() {
        add(&mut args, tenant.id.as_str())?;
    }
    Ok(args)
}

/// `$1` = the key, then `$2` = the tenant (only with a tenant column).
fn keyed_arguments<'q, K: Encode<'q, Postgres> + Type<Postgres>>(
    sql: &EntitySql,
    id: K,
    tenant: &Tenant,
) -> Result<PgArguments, Error> {
    let mut args = PgArguments::default();
    add(&mut args, id)?;
    if sql.tenant_column.is_some() {
        add(&mut args, tenant.id.as_str())?;
    }
    Ok(args)
}

/// [`EntitySql::read_text`] of `E`'s statements for `tenant`.
fn read_text<E: TenantEntity>(
    text: &str,
    count: bool,
    schema: Option<&str>,
    tenant: &Tenant,
) -> String {
    E::sql()
        .for_tenant(tenant)
        .read_text(text, count, schema, tenant)
}

/// A filtered query over an entity. Columns are checked against the entity's
/// columns, values are bind parameters, and the tenant filter is added by tenantry.
///
/// ```no_run
/// # use tenantry::{TenantEntity, Op};
/// # async fn f<P: TenantEntity>(db: &mut tenantry::TenantDb) -> Result<(), tenantry::Error> {
/// let recent: Vec<P> = P::select()
///     .filter("name", Op::Like, "apollo%")
///     .filter("id", Op::Gt, 10_i64)
///     .order_by("id", false)
///     .limit(20)
///     .fetch_all(db)
///     .await?;
/// # Ok(()) }
/// ```
pub struct Select<E> {
    conditions: Vec<(&'static str, Op)>,
    args: PgArguments,
    error: Option<Error>,
    order: Option<(&'static str, bool)>,
    limit: Option<i64>,
    offset: Option<i64>,
    _entity: PhantomData<fn() -> E>,
}

impl<E> std::fmt::Debug for Select<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Select")
            .field("conditions", &self.conditions)
            .field("order", &self.order)
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl<E: TenantEntity> Select<E> {
    fn new() -> Self {
        Self {
            conditions: Vec::new(),
            args: PgArguments::default(),
            error: None,
            order: None,
            limit: None,
            offset: None,
            _entity: PhantomData,
        }
    }

    fn column(&mut self, name: &str) -> Option<&'static str> {
        let found = E::COLUMNS.iter().copied().find(|c| *c == name);
        if found.is_none() && self.error.is_none() {
            // Columns are named by code, not by the request: a wrong one is a bug (500).
            self.error = Some(Error::Internal(format!(
                "`{}` has no column `{}` (columns: {})",
                E::TABLE,
                name.escape_debug(),
                E::COLUMNS.join(", ")
            )));
        }
        found
    }

    /// Adds `column <op> value`, the value bound as a parameter.
    pub fn filter<T>(mut self, column: &str, op: Op, value: T) -> Self
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres>,
    {
        if let Some(column) = self.column(column) {
            if let Err(e) = add(&mut self.args, value) {
                self.error.get_or_insert(e);
            }
            self.conditions.push((column, op));
        }
        self
    }

    /// Adds a typed condition (`Project::NAME.eq("apollo")`, see [`Col`](crate::Col)),
    /// the value bound as a parameter.
    pub fn filter_by(mut self, cond: Cond<E>) -> Self {
        if self.column(cond.column).is_none() {
            return self;
        }
        if let Err(e) = (cond.value)(&mut self.args) {
            self.error.get_or_insert(e);
        }
        self.conditions.push((cond.column, cond.op));
        self
    }

    /// Orders by a typed column (`Project::ID.desc()`).
    pub fn order(mut self, order: Order<E>) -> Self {
        if let Some(column) = self.column(order.column) {
            self.order = Some((column, order.descending));
        }
        self
    }

    /// Orders by `column`, descending if `descending`.
    pub fn order_by(mut self, column: &str, descending: bool) -> Self {
        if let Some(column) = self.column(column) {
            self.order = Some((column, descending));
        }
        self
    }

    /// At most `n` rows.
    pub fn limit(mut self, n: i64) -> Self {
        self.limit = Some(n.max(0));
        self
    }

    /// Skips `n` rows.
    pub fn offset(mut self, n: i64) -> Self {
        self.offset = Some(n.max(0));
        self
    }

    /// The text of the select [`Self::fetch_all`] sends for tenants of `strategy`
    /// (`$n` placeholders for the values; the tenant filter last among the
    /// conditions, where the statements have one): to log it or show its plan.
    pub fn sql(&self, strategy: Strategy) -> String {
        self.text(E::sql().for_strategy(strategy), false)
    }

    /// The text of the statement: `count` or the select, with the conditions, the
    /// tenant filter of `statements` and (unless `count`) order, limit and offset.
    fn text(&self, statements: &EntitySql, count: bool) -> String {
        let mut sql = if count {
            statements.count_prefix.clone()
        } else {
            statements.select_prefix.clone()
        };
        let mut n = 0;
        let mut clauses = Vec::new();
        for (column, op) in &self.conditions {
            n += 1;
            clauses.push(op.clause(&quote_ident(column), n));
        }
        if let Some(tenant_column) = &statements.tenant_column {
            n += 1;
            clauses.push(format!("{} = ${n}", quote_ident(tenant_column)));
        }
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        if !count {
            let (column, desc) = self.order.unwrap_or((E::PRIMARY_KEY, false));
            sql.push_str(&format!(
                " ORDER BY {}{}",
                quote_ident(column),
                if desc { " DESC" } else { "" }
            ));
            if self.limit.is_some() {
                n += 1;
                sql.push_str(&format!(" LIMIT ${n}"));
            }
            if self.offset.is_some() {
                n += 1;
                sql.push_str(&format!(" OFFSET ${n}"));
            }
        }
        sql
    }

    /// The statement for `tenant` and its arguments, in the placeholders' order.
    fn build(mut self, tenant: &Tenant, count: bool) -> Result<(String, PgArguments), Error> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let statements = E::sql().for_tenant(tenant);
        let sql = self.text(statements, count);
        if statements.tenant_column.is_some() {
            add(&mut self.args, tenant.id.as_str())?;
        }
        if !count {
            if let Some(limit) = self.limit {
                add(&mut self.args, limit)?;
            }
            if let Some(offset) = self.offset {
                add(&mut self.args, offset)?;
            }
        }
        Ok((sql, self.args))
    }

    /// The matching rows.
    pub fn fetch_all<H: TenantHandle>(
        self,
        handle: &mut H,
    ) -> BoxFuture<'_, Result<Vec<E>, Error>> {
        Box::pin(async move {
            let (sql, args) = self.build(handle.bound_tenant(), false)?;
            let rows = read_statement!(
                handle,
                E::TABLE,
                |schema| read_text::<E>(&sql, false, schema.as_deref(), handle.bound_tenant()),
                fetch_all(args)
            );
            decode_all(&rows)
        })
    }

    /// One page of the matching rows in primary-key order, after the request's
    /// cursor (see [`Page`](crate::Page)): `WHERE <key> > $after ORDER BY <key>
    /// LIMIT n`. A cursor that is not a key is a 400; an ordering set with
    /// [`Self::order`] or [`Self::order_by`] is replaced by the key's.
    pub fn page<'a, H: TenantHandle>(
        self,
        handle: &'a mut H,
        request: &PageRequest,
    ) -> BoxFuture<'a, Result<Page<E>, Error>>
    where
        E::Id: std::fmt::Display + std::str::FromStr,
    {
        let mut request = request.clone();
        // The field is public: keep whatever it holds within the page bounds.
        request.limit = request.limit.clamp(1, crate::page::MAX_PAGE_LIMIT);
        Box::pin(async move {
            let mut select = self;
            if let Some(after) = &request.after {
                let key: E::Id = after.parse().map_err(|_| {
                    Error::Validation(format!(
                        "`after` `{}` is not a cursor of this list",
                        after.chars().take(64).collect::<String>().escape_debug()
                    ))
                })?;
                select = select.filter(E::PRIMARY_KEY, Op::Gt, key);
            }
            select.order = Some((E::PRIMARY_KEY, false));
            select.offset = None;
            select.limit = Some(request.limit + 1);
            let mut items = select.fetch_all(&mut *handle).await?;
            let next = if items.len() as i64 > request.limit {
                items.truncate(request.limit as usize);
                items.last().map(|last| last.id().to_string())
            } else {
                None
            };
            let keys = items.iter().map(|item| item.id().to_string()).collect();
            Ok(Page::new(items, keys, next, &request))
        })
    }

    /// The first matching row.
    pub fn fetch_optional<H: TenantHandle>(
        self,
        handle: &mut H,
    ) -> BoxFuture<'_, Result<Option<E>, Error>> {
        Box::pin(async move {
            let (sql, args) = self.limit(1).build(handle.bound_tenant(), false)?;
            let row = read_statement!(
                handle,
                E::TABLE,
                |schema| read_text::<E>(&sql, false, schema.as_deref(), handle.bound_tenant()),
                fetch_optional(args)
            );
            decode_optional(row.as_ref())
        })
    }

    /// How many rows match, per value of `column`: `SELECT column, count(*) ...
    /// GROUP BY column`, in no particular order. A count per row of another list (the
    /// comments of each article on a page) is `Comment::select()
    /// .filter_by(Comment::ARTICLE_ID.any(ids)).count_by(Comment::ARTICLE_ID, db)`;
    /// the distinct values of a column with their frequency are the same without the
    /// filter. An ordering, limit or offset is an error (500).
    ///
    /// ```no_run
    /// # use tenantry::TenantEntity;
    /// # #[derive(TenantEntity)]
    /// # struct Favorite { #[tenant(id, generated)] id: i64, user_id: i64, article_id: i64 }
    /// # async fn f(db: &mut tenantry::TenantDb) -> Result<(), tenantry::Error> {
    /// let per_article: Vec<(i64, i64)> = Favorite::select()
    ///     .filter_by(Favorite::ARTICLE_ID.any(vec![1, 2, 3]))
    ///     .count_by(Favorite::ARTICLE_ID, db)
    ///     .await?;
    /// # let _ = per_article; Ok(()) }
    /// ```
    pub fn count_by<'a, T, W, H: TenantHandle>(
        self,
        column: Col<E, T, W>,
        handle: &'a mut H,
    ) -> BoxFuture<'a, Result<Vec<(T, i64)>, Error>>
    where
        T: ColumnType + Send + 'static,
        E: 'a,
    {
        let name = column.name();
        Box::pin(async move {
            if self.order.is_some() || self.limit.is_some() || self.offset.is_some() {
                return Err(Error::Internal(format!(
                    "`{}`: a grouped count takes conditions only (no order, limit or offset)",
                    E::TABLE
                )));
            }
            let mut select = self;
            let Some(name) = select.column(name) else {
                return Err(select.error.take().unwrap_or_else(|| {
                    Error::Internal(format!("`{}` has no such column", E::TABLE))
                }));
            };
            let quoted = quote_ident(name);
            let (mut sql, args) = select.build(handle.bound_tenant(), true)?;
            sql.push_str(&format!(" GROUP BY {quoted}"));
            let rows = read_statement!(
                handle,
                E::TABLE,
                |schema| read_text::<E>(&sql, true, schema.as_deref(), handle.bound_tenant())
                    .replacen("SELECT count(*)", &format!("SELECT {quoted}, count(*)"), 1),
                fetch_all(args)
            );
            rows.iter()
                .map(|row| Ok((sqlx::Row::try_get(row, 0)?, sqlx::Row::try_get(row, 1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(Error::from)
        })
    }

    /// Whether any row matches (the first one is read, and dropped).
    pub fn exists<H: TenantHandle>(self, handle: &mut H) -> BoxFuture<'_, Result<bool, Error>> {
        Box::pin(async move { Ok(self.fetch_optional(handle).await?.is_some()) })
    }

    /// Deletes the matching rows (of the handle's tenant only: the tenant filter is
    /// added as for every statement) and returns how many there were. An ordering,
    /// limit or offset is an error (500): `DELETE` has none, and dropping it silently
    /// would delete more than the caller asked for.
    ///
    /// ```no_run
    /// # use tenantry::TenantEntity;
    /// # #[derive(TenantEntity)]
    /// # struct Follow { #[tenant(id, generated)] id: i64, follower: i64, followee: i64 }
    /// # async fn f(tx: &mut tenantry::TenantTx) -> Result<(), tenantry::Error> {
    /// let gone = Follow::select()
    ///     .filter_by(Follow::FOLLOWER.eq(1))
    ///     .filter_by(Follow::FOLLOWEE.eq(2))
    ///     .delete(tx)
    ///     .await?;
    /// # let _ = gone; Ok(()) }
    /// ```
    pub fn delete<H: TenantHandle>(self, handle: &mut H) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(async move {
            if self.order.is_some() || self.limit.is_some() || self.offset.is_some() {
                return Err(Error::Internal(format!(
                    "`{}`: a delete takes conditions only (no order, limit or offset)",
                    E::TABLE
                )));
            }
            let (select, mut args) = self.build(handle.bound_tenant(), true)?;
            let statements = E::sql().for_tenant(handle.bound_tenant());
            // `SELECT count(*) FROM <table> [WHERE ...]` -> `DELETE FROM <table> [WHERE ...]`.
            let tail = &select[statements.count_prefix.len()..];
            let text = format!("DELETE FROM {}{tail}", quoted_table(E::TABLE));
            let args = std::mem::take(&mut args);
            let done = own_statement!(
                handle,
                execute(sqlx::query_with(sqlx::AssertSqlSafe(text), args))
            );
            handle.touch(sealed::Token(()));
            Ok(done.rows_affected())
        })
    }

    /// How many rows match.
    pub fn count<H: TenantHandle>(self, handle: &mut H) -> BoxFuture<'_, Result<i64, Error>> {
        Box::pin(async move {
            let (sql, args) = self.build(handle.bound_tenant(), true)?;
            let row = read_statement!(
                handle,
                E::TABLE,
                |schema| read_text::<E>(&sql, true, schema.as_deref(), handle.bound_tenant()),
                fetch_one(args)
            );
            let n: i64 = sqlx::Row::try_get(&row, 0)?;
            Ok(n)
        })
    }
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
