//! Tenant-aware models: the trait behind `#[derive(TenantEntity)]`, the tenant-bound
//! handle its operations require, and a filter builder that binds every value.

use std::future::Future;
use std::marker::PhantomData;

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Encode, PgConnection, Postgres, Type};

use crate::db::{TenantDb, TenantTx};
use crate::error::Error;
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
    /// The tenant it is bound to.
    fn bound_tenant(&self) -> &Tenant;
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
    fn bound_tenant(&self) -> &Tenant {
        self.tenant()
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
    fn bound_tenant(&self) -> &Tenant {
        self.tenant()
    }
}

/// Runs one of tenantry's own statements on a handle: `$query` (unnamed behind a
/// transaction pooler) through the executor method `$method`, between `begin_own`
/// and `end_own`.
macro_rules! own_statement {
    ($handle:expr, $method:ident($query:expr)) => {{
        let local = $handle.begin_own(sealed::Token(())).await?;
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

/// The statements of an entity, generated once per type at compile time.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct EntitySql {
    pub find: &'static str,
    pub list: &'static str,
    pub count: &'static str,
    pub insert: &'static str,
    pub update: &'static str,
    pub delete: &'static str,
    pub select_prefix: &'static str,
    pub count_prefix: &'static str,
}

/// A model stored per tenant. Derive it with `#[derive(TenantEntity)]`.
///
/// Every operation takes a tenant-bound handle ([`TenantHandle`]). With a tenant
/// column (`#[tenant(tenant_column)]`) every generated statement also carries
/// `tenant_column = <the handle's tenant>`, and inserts fill that column; without
/// one, the entity relies on the handle's scoping (schema per tenant).
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
    /// The generated statements.
    #[doc(hidden)]
    const SQL: EntitySql;

    /// Decodes a row.
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error>;

    /// The primary key of this value.
    fn id(&self) -> &Self::Id;

    /// Arguments of the insert statement (the tenant column filled from `tenant`).
    #[doc(hidden)]
    fn insert_arguments(&self, tenant: &str) -> Result<PgArguments, Error>;

    /// Arguments of the update statement.
    #[doc(hidden)]
    fn update_arguments(&self, tenant: &str) -> Result<PgArguments, Error>;

    /// The row with this primary key, if the tenant has it.
    fn find<'a, H: TenantHandle>(
        handle: &'a mut H,
        id: &'a Self::Id,
    ) -> impl Future<Output = Result<Option<Self>, Error>> + Send + 'a {
        async move {
            let args = keyed_arguments::<Self>(id, handle.bound_tenant())?;
            let row = own_statement!(
                handle,
                fetch_optional(sqlx::query_with(Self::SQL.find, args))
            );
            decode_optional(row.as_ref())
        }
    }

    /// A page of the tenant's rows, ordered by primary key.
    fn list<'a, H: TenantHandle>(
        handle: &'a mut H,
        limit: i64,
        offset: i64,
    ) -> impl Future<Output = Result<Vec<Self>, Error>> + Send + 'a {
        async move {
            if limit < 0 || offset < 0 {
                return Err(Error::Validation(
                    "`limit` and `offset` must not be negative".to_owned(),
                ));
            }
            let mut args = tenant_arguments::<Self>(handle.bound_tenant())?;
            add(&mut args, limit)?;
            add(&mut args, offset)?;
            let rows = own_statement!(handle, fetch_all(sqlx::query_with(Self::SQL.list, args)));
            decode_all(&rows)
        }
    }

    /// How many rows the tenant has.
    fn count<H: TenantHandle>(
        handle: &mut H,
    ) -> impl Future<Output = Result<i64, Error>> + Send + '_ {
        async move {
            let args = tenant_arguments::<Self>(handle.bound_tenant())?;
            let row = own_statement!(handle, fetch_one(sqlx::query_with(Self::SQL.count, args)));
            let n: i64 = sqlx::Row::try_get(&row, 0)?;
            Ok(n)
        }
    }

    /// Inserts this value (generated columns are left to the database) and returns
    /// the stored row.
    fn insert<'a, H: TenantHandle>(
        &'a self,
        handle: &'a mut H,
    ) -> impl Future<Output = Result<Self, Error>> + Send + 'a
    where
        Self: Sync,
    {
        async move {
            let args = self.insert_arguments(handle.bound_tenant().id.as_str())?;
            let row = own_statement!(handle, fetch_one(sqlx::query_with(Self::SQL.insert, args)));
            Self::from_row(&row).map_err(Error::from)
        }
    }

    /// Writes every non-key column of this value; returns the stored row, or `None`
    /// if the tenant has no row with this primary key.
    fn update<'a, H: TenantHandle>(
        &'a self,
        handle: &'a mut H,
    ) -> impl Future<Output = Result<Option<Self>, Error>> + Send + 'a
    where
        Self: Sync,
    {
        async move {
            let args = self.update_arguments(handle.bound_tenant().id.as_str())?;
            let row = own_statement!(
                handle,
                fetch_optional(sqlx::query_with(Self::SQL.update, args))
            );
            decode_optional(row.as_ref())
        }
    }

    /// Deletes the row with this primary key; `true` if the tenant had it.
    fn delete<'a, H: TenantHandle>(
        handle: &'a mut H,
        id: &'a Self::Id,
    ) -> impl Future<Output = Result<bool, Error>> + Send + 'a {
        async move {
            let args = keyed_arguments::<Self>(id, handle.bound_tenant())?;
            let done = own_statement!(handle, execute(sqlx::query_with(Self::SQL.delete, args)));
            Ok(done.rows_affected() > 0)
        }
    }

    /// Starts a filtered query; the tenant filter is added for you.
    fn select() -> Select<Self> {
        Select::new()
    }
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
    args.add(value)
        .map_err(|e| Error::Validation(format!("cannot encode a value: {e}")))
}

/// `$1` = the tenant (only when the entity has a tenant column).
fn tenant_arguments<E: TenantEntity>(tenant: &Tenant) -> Result<PgArguments, Error> {
    let mut args = PgArguments::default();
    if E::TENANT_COLUMN.is_some() {
        add(&mut args, tenant.id.as_str())?;
    }
    Ok(args)
}

/// `$1` = the key, then `$2` = the tenant (only with a tenant column).
fn keyed_arguments<E: TenantEntity>(id: &E::Id, tenant: &Tenant) -> Result<PgArguments, Error> {
    let mut args = PgArguments::default();
    add(&mut args, id)?;
    if E::TENANT_COLUMN.is_some() {
        add(&mut args, tenant.id.as_str())?;
    }
    Ok(args)
}

/// A comparison in a [`Select`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `LIKE`
    Like,
    /// `ILIKE`
    ILike,
}

impl Op {
    fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Like => "LIKE",
            Op::ILike => "ILIKE",
        }
    }
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
            self.error = Some(Error::Validation(format!(
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

    fn build(
        mut self,
        prefix: &str,
        tenant: &Tenant,
        paged: bool,
    ) -> Result<(String, PgArguments), Error> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut sql = String::from(prefix);
        let mut n = 0;
        let mut clauses = Vec::new();
        for (column, op) in &self.conditions {
            n += 1;
            clauses.push(format!("\"{column}\" {} ${n}", op.sql()));
        }
        if let Some(tenant_column) = E::TENANT_COLUMN {
            n += 1;
            add(&mut self.args, tenant.id.as_str())?;
            clauses.push(format!("\"{tenant_column}\" = ${n}"));
        }
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        if paged {
            let (column, desc) = self.order.unwrap_or((E::PRIMARY_KEY, false));
            sql.push_str(&format!(
                " ORDER BY \"{column}\"{}",
                if desc { " DESC" } else { "" }
            ));
            if let Some(limit) = self.limit {
                n += 1;
                add(&mut self.args, limit)?;
                sql.push_str(&format!(" LIMIT ${n}"));
            }
            if let Some(offset) = self.offset {
                n += 1;
                add(&mut self.args, offset)?;
                sql.push_str(&format!(" OFFSET ${n}"));
            }
        }
        Ok((sql, self.args))
    }

    /// The matching rows.
    pub async fn fetch_all<H: TenantHandle>(self, handle: &mut H) -> Result<Vec<E>, Error> {
        let (sql, args) = self.build(E::SQL.select_prefix, handle.bound_tenant(), true)?;
        let rows = own_statement!(
            handle,
            fetch_all(sqlx::query_with(sqlx::AssertSqlSafe(sql), args))
        );
        decode_all(&rows)
    }

    /// The first matching row.
    pub async fn fetch_optional<H: TenantHandle>(self, handle: &mut H) -> Result<Option<E>, Error> {
        let (sql, args) = self
            .limit(1)
            .build(E::SQL.select_prefix, handle.bound_tenant(), true)?;
        let row = own_statement!(
            handle,
            fetch_optional(sqlx::query_with(sqlx::AssertSqlSafe(sql), args))
        );
        decode_optional(row.as_ref())
    }

    /// How many rows match.
    pub async fn count<H: TenantHandle>(self, handle: &mut H) -> Result<i64, Error> {
        let (sql, args) = self.build(E::SQL.count_prefix, handle.bound_tenant(), false)?;
        let row = own_statement!(
            handle,
            fetch_one(sqlx::query_with(sqlx::AssertSqlSafe(sql), args))
        );
        let n: i64 = sqlx::Row::try_get(&row, 0)?;
        Ok(n)
    }
}
