//! Fan-out: one piece of work run for many tenants, each under its own binding, with
//! bounded concurrency and a timeout per tenant, results streamed back as they come.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, Stream, StreamExt};

use super::TenantManager;
use crate::db::TenantTx;
use crate::error::Error;
use crate::tenant::{Strategy, Tenant, TenantId, TenantStatus};

/// Which tenants a fan-out visits. Only active tenants are visited: a suspended
/// tenant's handles are refused (403) like its requests.
///
/// ```
/// use tenantry::{Selection, Strategy};
/// let some = Selection::Ids(vec!["acme".parse().unwrap(), "globex".parse().unwrap()]);
/// assert_ne!(some, Selection::Strategy(Strategy::Row));
/// assert_eq!(Selection::default(), Selection::All);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    /// Every active tenant (the default).
    #[default]
    All,
    /// The active tenants of one strategy.
    Strategy(Strategy),
    /// These tenants; an unknown or inactive one is reported as failed.
    Ids(Vec<TenantId>),
}

/// How a fan-out runs.
///
/// ```
/// use std::time::Duration;
/// use tenantry::{FanOut, Selection, Strategy};
///
/// let options = FanOut {
///     selection: Selection::Strategy(Strategy::Row),
///     concurrency: 8,
///     timeout: Duration::from_secs(10),
/// };
/// assert_eq!(FanOut::default().concurrency, 4);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    /// Which tenants.
    pub selection: Selection,
    /// Tenants worked on at the same time (default 4; at least 1).
    pub concurrency: usize,
    /// How long one tenant's work may take (default 30 s; its statements get it as
    /// their `statement_timeout` too); past it, its transaction is rolled back and the
    /// tenant is reported as failed. The commit of work done in time is not cut.
    pub timeout: Duration,
}

impl Default for FanOut {
    fn default() -> Self {
        Self {
            selection: Selection::All,
            concurrency: 4,
            timeout: Duration::from_secs(30),
        }
    }
}

/// One tenant's outcome of a fan-out (see [`TenantManager::fan_out`] for a loop over
/// them).
#[derive(Debug)]
pub struct TenantOutcome<T> {
    /// The tenant.
    pub tenant: TenantId,
    /// What the work returned (its transaction committed), or why it failed (rolled
    /// back).
    pub result: Result<T, Error>,
}

impl TenantManager {
    /// Runs `work` for each selected tenant with a transaction bound to it
    /// ([`TenantTx`]: its schema, its database, or its rows under row-level security),
    /// `concurrency` tenants at a time, and streams each tenant's outcome as it
    /// finishes (the registry is read first: failing to read it is the call's error).
    /// A tenant's transaction commits when its work returns `Ok` and rolls
    /// back on an error or its timeout; one tenant's failure does not stop the others.
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// use tenantry::FanOut;
    ///
    /// # async fn f(manager: tenantry::TenantManager) -> Result<(), tenantry::Error> {
    /// let outcomes = manager
    ///     .fan_out(FanOut::default(), |_tenant, mut tx| async move {
    ///         let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
    ///             .fetch_one(&mut tx)
    ///             .await?;
    ///         Ok((n, tx))
    ///     })
    ///     .await?;
    /// let mut outcomes = std::pin::pin!(outcomes);
    /// while let Some(outcome) = outcomes.next().await {
    ///     match outcome.result {
    ///         Ok(n) => println!("{}: {n} projects", outcome.tenant),
    ///         Err(e) => eprintln!("{}: {e}", outcome.tenant),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// The work hands its transaction back with its result (`Ok((value, tx))`), so the
    /// fan-out can commit it.
    pub async fn fan_out<'a, T, F, Fut>(
        &'a self,
        options: FanOut,
        work: F,
    ) -> Result<impl Stream<Item = TenantOutcome<T>> + Send + 'a, Error>
    where
        T: Send + 'a,
        F: Fn(Arc<Tenant>, TenantTx) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = Result<(T, TenantTx), Error>> + Send + 'a,
    {
        let work = Arc::new(work);
        let concurrency = options.concurrency.max(1);
        let timeout = options.timeout;
        let items = self.selected(options.selection).await?;
        Ok(stream::iter(items)
            .map(move |item| {
                let work = work.clone();
                async move {
                    let tenant = match item {
                        Ok(tenant) => tenant,
                        Err((tenant, e)) => {
                            return TenantOutcome {
                                tenant,
                                result: Err(e),
                            };
                        }
                    };
                    let id = tenant.id.clone();
                    let deadline = tokio::time::Instant::now() + timeout;
                    let work_done = tokio::time::timeout_at(deadline, async {
                        let mut tx = self.tenant_tx(tenant.clone()).await?;
                        // The server stops the tenant's statements at the deadline too:
                        // a statement abandoned by the timeout does not run on.
                        let ms = timeout.as_millis().clamp(1, i32::MAX as u128);
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "SET LOCAL statement_timeout TO {ms}"
                        )))
                        .execute(&mut tx)
                        .await?;
                        work(tenant, tx).await
                    })
                    .await;
                    let result = match work_done {
                        // Committed outside the deadline: a commit cut short would
                        // leave its outcome unknown.
                        Ok(Ok((value, tx))) => tx.commit().await.map(|()| value),
                        Ok(Err(e)) => Err(e),
                        // Dropping the work dropped its transaction: rolled back.
                        Err(_) => Err(Error::Internal(format!(
                            "tenant `{id}` did not finish within {timeout:?}; its transaction \
                             was rolled back"
                        ))),
                    };
                    TenantOutcome { tenant: id, result }
                }
            })
            .buffer_unordered(concurrency))
    }

    /// The tenants `selection` names, active ones only; each named tenant that cannot
    /// be visited comes back as an error of its own.
    async fn selected(
        &self,
        selection: Selection,
    ) -> Result<Vec<Result<Arc<Tenant>, (TenantId, Error)>>, Error> {
        let tenants = self.list_tenants().await?;
        let active = |t: &Tenant| t.status == TenantStatus::Active;
        Ok(match selection {
            Selection::All => tenants
                .into_iter()
                .filter(|t| active(t))
                .map(|t| Ok(Arc::new(t)))
                .collect(),
            Selection::Strategy(strategy) => tenants
                .into_iter()
                .filter(|t| active(t) && t.strategy == strategy)
                .map(|t| Ok(Arc::new(t)))
                .collect(),
            Selection::Ids(ids) => ids
                .into_iter()
                .map(|id| match tenants.iter().find(|t| t.id == id) {
                    Some(t) if active(t) => Ok(Arc::new(t.clone())),
                    Some(t) => Err((
                        id.clone(),
                        Error::TenantNotActive {
                            id,
                            status: t.status,
                        },
                    )),
                    None => Err((id.clone(), Error::TenantNotFound(id))),
                })
                .collect(),
        })
    }
}
