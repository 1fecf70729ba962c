//! [`Select`]: a filtered query over an entity, every value bound.

use std::marker::PhantomData;

use futures::future::BoxFuture;
use sqlx::postgres::PgArguments;
use sqlx::{Encode, Postgres, Type};

use super::{
    EntitySql, TenantEntity, TenantHandle, add, decode_all, decode_optional, quoted_table,
    read_text, sealed,
};
use crate::column::{Col, ColumnType, Cond, Op, Order};
use crate::error::Error;
use crate::naming::quote_ident;
use crate::page::{Page, PageRequest};
use crate::tenant::{Strategy, Tenant};

/// A filtered query over an entity. Columns are checked against the entity's
/// columns, values are bind parameters, and the tenant filter is added by tenantry.
///
/// ```no_run
/// # use tenantry::{TenantEntity, Op};
/// # async fn f<P: TenantEntity>(db: &mut tenantry::TenantDb) -> Result<(), tenantry::Error> {
/// let recent: Vec<P> = P::select()
///     .filter_named("name", Op::Like, "apollo%")
///     .filter_named("id", Op::Gt, 10_i64)
///     .sort_named("id", false)
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
    pub(super) fn new() -> Self {
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

    /// Adds `column <op> value` for a column named at run time, the value bound as a
    /// parameter; an unknown column fails the statement with a 400 naming the
    /// entity's columns. The typed form is [`filter_by`](Self::filter_by).
    pub fn filter_named<T>(mut self, column: &str, op: Op, value: T) -> Self
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

    /// Orders by a typed column (`Project::ID.desc()`). The form for a column named
    /// at run time is [`sort_named`](Self::sort_named).
    pub fn sort_by(mut self, order: Order<E>) -> Self {
        if let Some(column) = self.column(order.column) {
            self.order = Some((column, order.descending));
        }
        self
    }

    /// Orders by `column`, named at run time, descending if `descending`. The typed
    /// form is [`sort_by`](Self::sort_by).
    pub fn sort_named(mut self, column: &str, descending: bool) -> Self {
        if let Some(column) = self.column(column) {
            self.order = Some((column, descending));
        }
        self
    }

    /// The old name of [`filter_named`](Self::filter_named).
    #[deprecated(
        since = "0.2.0",
        note = "renamed `filter_named`: `_by` takes a typed column, `_named` a name"
    )]
    pub fn filter<T>(self, column: &str, op: Op, value: T) -> Self
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres>,
    {
        self.filter_named(column, op, value)
    }

    /// The old name of [`sort_by`](Self::sort_by).
    #[deprecated(
        since = "0.2.0",
        note = "renamed `sort_by`: `_by` takes a typed column, `_named` a name"
    )]
    pub fn order(self, order: Order<E>) -> Self {
        self.sort_by(order)
    }

    /// The old name of [`sort_named`](Self::sort_named).
    #[deprecated(
        since = "0.2.0",
        note = "renamed `sort_named`: `_by` takes a typed column, `_named` a name"
    )]
    pub fn order_by(self, column: &str, descending: bool) -> Self {
        self.sort_named(column, descending)
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

    /// An error (500) if an ordering, limit or offset was set: `what` (a delete, a
    /// grouped count) takes conditions only, and dropping the rest silently would
    /// touch more rows than the caller asked for.
    fn conditions_only(&self, what: &str) -> Result<(), Error> {
        if self.order.is_some() || self.limit.is_some() || self.offset.is_some() {
            return Err(Error::Internal(format!(
                "`{}`: {what} takes conditions only (no order, limit or offset)",
                E::TABLE
            )));
        }
        Ok(())
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
                select = select.filter_named(E::PRIMARY_KEY, Op::Gt, key);
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
            self.conditions_only("a grouped count")?;
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
            self.conditions_only("a delete")?;
            let (select, args) = self.build(handle.bound_tenant(), true)?;
            let statements = E::sql().for_tenant(handle.bound_tenant());
            // `SELECT count(*) FROM <table> [WHERE ...]` -> `DELETE FROM <table> [WHERE ...]`.
            let tail = &select[statements.count_prefix.len()..];
            let text = format!("DELETE FROM {}{tail}", quoted_table(E::TABLE));
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
