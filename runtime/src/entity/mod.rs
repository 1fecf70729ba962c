//! Tenant-aware models: the trait behind `#[derive(TenantEntity)]`, the tenant-bound
//! handle its operations require, and a filter builder that binds every value.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Encode, PgConnection, Postgres, Type};

use crate::column::Assign;
use crate::db::{TenantDb, TenantTx};
use crate::error::Error;
use crate::naming::quote_ident;
use crate::tenant::Tenant;

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

mod select;
mod sql;

pub use select::Select;
pub use sql::EntitySql;
use sql::quoted_table;

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
