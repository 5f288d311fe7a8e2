//! The ledger: usage intervals, the tenant tree and price books as billing saw them, and closed
//! months, in SQLite (embedded, the default) or PostgreSQL (production). One schema and one set
//! of queries serve both; the connection URL selects the database.
//!
//! Exactly once: every usage row has an idempotency key derived from the object it meters
//! (`pod/<uid>/<meter>`, `pvc/<uid>`), so recording the same fact again (after a restart, a
//! re-list, a replayed event) changes nothing; closing an interval only ever sets an end that
//! is not set yet. Every write is one transaction.

use std::{collections::HashMap, time::Duration};

use sqlx::{
    AnyPool, Connection, Row,
    any::{AnyPoolOptions, AnyRow},
};

use crate::{calendar::Seconds, meter::Meter, rating::TenantInfo, rating::Usage};

/// The ledger's database.
#[derive(Clone, Debug)]
pub struct Ledger {
    pool: AnyPool,
    backend: Backend,
}

/// Which database a ledger is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Errors of the ledger, each with a stable label.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "{0:?} is not a ledger URL: use sqlite://PATH (a file, created if missing) or postgres://USER@HOST/DATABASE"
    )]
    UnsupportedUrl(String),
    #[error("cannot reach the ledger database {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    #[error("cannot migrate the ledger database to version {version}: {source}")]
    Migration { version: i64, source: sqlx::Error },
    #[error("the ledger database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("the ledger holds a row it cannot read: {0}")]
    Corrupt(String),
}

impl LedgerError {
    pub fn label(&self) -> &'static str {
        match self {
            LedgerError::UnsupportedUrl(_) => "ledger_url",
            LedgerError::Connect { .. } => "ledger_unreachable",
            LedgerError::Migration { .. } => "ledger_migration",
            LedgerError::Query(_) => "ledger_query",
            LedgerError::Corrupt(_) => "ledger_corrupt",
        }
    }
}

/// One metered fact: `amount` of a meter held by an object from `started_at`, until
/// `ended_at` once that is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// The idempotency key: the same fact always has the same key.
    pub key: String,
    /// The UID of the object metered; every interval of an object closes together.
    pub source: String,
    /// `pod`, `pvc`, or `guarantee` (a tenant's guaranteed quota).
    pub kind: String,
    pub tenant: String,
    pub namespace: String,
    pub object: String,
    pub node: String,
    pub site: String,
    pub region_class: String,
    pub pool: String,
    pub meter: Meter,
    pub gpu_model: String,
    pub amount: i64,
    pub started_at: Seconds,
    pub ended_at: Option<Seconds>,
    /// The end is the last moment the object was known to hold it, not an observed end.
    pub estimated: bool,
}

/// An interval as the ledger holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub key: String,
    pub meter: Meter,
    pub amount: i64,
    pub started_at: Seconds,
    pub ended_at: Option<Seconds>,
    pub estimated: bool,
}

/// The schema, one version per step; a step is applied in one transaction and never edited
/// once released (a new one is added instead).
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE usage_intervals (
        key TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        tenant TEXT NOT NULL,
        namespace TEXT NOT NULL,
        object TEXT NOT NULL,
        node TEXT NOT NULL,
        site TEXT NOT NULL,
        region_class TEXT NOT NULL,
        pool TEXT NOT NULL,
        meter TEXT NOT NULL,
        gpu_model TEXT NOT NULL,
        amount BIGINT NOT NULL,
        started_at BIGINT NOT NULL,
        ended_at BIGINT,
        last_seen_at BIGINT NOT NULL,
        estimated BIGINT NOT NULL,
        recorded_at BIGINT NOT NULL
    );
    CREATE INDEX usage_intervals_source ON usage_intervals (source);
    CREATE INDEX usage_intervals_started ON usage_intervals (started_at);
    CREATE INDEX usage_intervals_open ON usage_intervals (ended_at);
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        parent TEXT,
        level TEXT NOT NULL,
        cost_center TEXT,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE price_books (
        name TEXT PRIMARY KEY,
        document TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE closed_months (
        month TEXT PRIMARY KEY,
        closed_at BIGINT NOT NULL,
        total_fen BIGINT NOT NULL
    );
    CREATE TABLE closed_cells (
        month TEXT NOT NULL,
        seq BIGINT NOT NULL,
        tenant TEXT NOT NULL,
        site TEXT NOT NULL,
        region_class TEXT NOT NULL,
        meter TEXT NOT NULL,
        gpu_model TEXT NOT NULL,
        corrects TEXT NOT NULL,
        slot_start BIGINT NOT NULL,
        slot_end BIGINT NOT NULL,
        usage TEXT NOT NULL,
        unit_price TEXT NOT NULL,
        discount TEXT NOT NULL,
        book TEXT NOT NULL,
        amount_fen BIGINT NOT NULL,
        PRIMARY KEY (month, seq)
    );
    CREATE TABLE closed_tenants (
        month TEXT NOT NULL,
        name TEXT NOT NULL,
        display_name TEXT NOT NULL,
        parent TEXT,
        level TEXT NOT NULL,
        cost_center TEXT,
        PRIMARY KEY (month, name)
    )",
)];

impl Ledger {
    /// Connects to the database of `url` and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Ledger, LedgerError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(LedgerError::UnsupportedUrl(url.to_string()));
            }
            // Created when missing; WAL lets exports read while the meter writes.
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(LedgerError::UnsupportedUrl(url.to_string()));
        };
        let target = redact(&url);
        // One connection first: a pool reports an unreachable server only as a timeout.
        let probe = tokio::time::timeout(Duration::from_secs(10), sqlx::AnyConnection::connect(&url)).await;
        match probe {
            Ok(Ok(connection)) => connection
                .close()
                .await
                .map_err(|source| LedgerError::Connect { target: target.clone(), source })?,
            Ok(Err(source)) => return Err(LedgerError::Connect { target, source }),
            Err(_) => return Err(LedgerError::Connect { target, source: sqlx::Error::PoolTimedOut }),
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 1 } else { 4 })
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|source| LedgerError::Connect { target: target.clone(), source })?;
        let ledger = Ledger { pool, backend };
        // Replicas (or a meter and a `close`) may open the same ledger at once: WAL mode and the
        // schema are settled by whichever comes first, the others try again and find it so.
        let mut attempt = 0;
        loop {
            match ledger.prepare().await {
                Ok(()) => break,
                Err(err) if attempt < 10 => {
                    attempt += 1;
                    tracing::debug!(%err, attempt, "the ledger is being prepared by another process; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(ledger)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// WAL mode for SQLite (exports read while the meter writes), then the schema.
    async fn prepare(&self) -> Result<(), LedgerError> {
        if self.backend == Backend::Sqlite {
            sqlx::raw_sql("PRAGMA busy_timeout = 10000").execute(&self.pool).await?;
            sqlx::raw_sql("PRAGMA journal_mode = WAL").execute(&self.pool).await?;
        }
        self.migrate().await
    }

    async fn migrate(&self) -> Result<(), LedgerError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS ledger_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        for &(version, script) in MIGRATIONS {
            let failed = |source| LedgerError::Migration { version, source };
            let mut tx = self.pool.begin().await?;
            let applied = sqlx::query("SELECT version FROM ledger_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
            if applied.is_some() {
                continue;
            }
            sqlx::raw_sql(script).execute(&mut *tx).await.map_err(failed)?;
            sqlx::query("INSERT INTO ledger_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(now())
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            tx.commit().await.map_err(failed)?;
        }
        Ok(())
    }

    /// Records intervals in one transaction. A key already recorded keeps its row, except
    /// that an end is set on a row that has none yet.
    pub async fn record(&self, intervals: &[Interval]) -> Result<(), LedgerError> {
        if intervals.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for interval in intervals {
            insert(
                &mut tx,
                interval,
                "DO UPDATE SET ended_at = excluded.ended_at, estimated = excluded.estimated \
                 WHERE usage_intervals.ended_at IS NULL AND excluded.ended_at IS NOT NULL",
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records usage beyond the requests ([`crate::usage`]) in one transaction, returning how
    /// many intervals are new. Each starts no earlier than the last one of its pod and meter
    /// ended, so that measurement windows that overlap never count a second twice; a key
    /// already recorded is left as it is.
    pub async fn record_over_request(&self, intervals: &[Interval]) -> Result<u64, LedgerError> {
        let mut ordered: Vec<&Interval> = intervals.iter().filter(|i| i.ended_at.is_some()).collect();
        ordered.sort_by_key(|i| (&i.source, i.meter, i.started_at));
        let mut recorded = 0;
        let mut tx = self.pool.begin().await?;
        for interval in ordered {
            let covered: Option<i64> =
                sqlx::query("SELECT MAX(ended_at) FROM usage_intervals WHERE source = $1 AND meter = $2")
                    .bind(&interval.source)
                    .bind(interval.meter.key())
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
            let started_at = covered.map_or(interval.started_at, |c| c.max(interval.started_at));
            if interval.ended_at.is_none_or(|end| end <= started_at) {
                continue;
            }
            let clipped = Interval { started_at, ..interval.clone() };
            recorded += insert(&mut tx, &clipped, "DO NOTHING").await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Ends every open interval of the objects named, each at its time (never before it
    /// started), in one transaction.
    pub async fn close(&self, ends: &[(String, Seconds, bool)]) -> Result<(), LedgerError> {
        if ends.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (source, at, estimated) in ends {
            sqlx::query(
                "UPDATE usage_intervals SET ended_at = CASE WHEN started_at > $1 THEN started_at ELSE $1 END, \
                 estimated = $2 WHERE source = $3 AND ended_at IS NULL",
            )
            .bind(*at)
            .bind(i64::from(*estimated))
            .bind(source)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks every open interval as known held at `at`: where an object vanishes while the
    /// meter is down, its interval ends here, marked estimated.
    pub async fn checkpoint(&self, at: Seconds) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE usage_intervals SET last_seen_at = $1 WHERE ended_at IS NULL AND last_seen_at < $1",
        )
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The objects of a kind (`pod`, `pvc`) with open intervals, and the last moment each was
    /// known held.
    pub async fn open_sources(&self, kind: &str) -> Result<HashMap<String, Seconds>, LedgerError> {
        let rows = sqlx::query(
            "SELECT source, MIN(last_seen_at) FROM usage_intervals WHERE ended_at IS NULL AND kind = $1 GROUP BY source",
        )
        .bind(kind)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?))).collect()
    }

    /// Usage overlapping `[from, to)`. An interval still open counts until its last
    /// checkpoint (at most `now`): never beyond what the meter saw, so a meter that is down
    /// bills nothing it cannot vouch for.
    pub async fn usages(&self, from: Seconds, to: Seconds, now: Seconds) -> Result<Vec<Usage>, LedgerError> {
        self.intervals_between("kind <> 'guarantee'", from, to, now).await
    }

    /// The tenants' guarantees held over `[from, to)`, as reserved meters.
    pub async fn guarantees(
        &self,
        from: Seconds,
        to: Seconds,
        now: Seconds,
    ) -> Result<Vec<Usage>, LedgerError> {
        self.intervals_between("kind = 'guarantee'", from, to, now).await
    }

    async fn intervals_between(
        &self,
        kinds: &str,
        from: Seconds,
        to: Seconds,
        now: Seconds,
    ) -> Result<Vec<Usage>, LedgerError> {
        let rows = sqlx::query(&format!(
            "SELECT tenant, site, region_class, meter, gpu_model, amount, started_at, ended_at, last_seen_at \
             FROM usage_intervals WHERE {kinds} AND started_at < $1 \
             AND (ended_at IS NULL OR ended_at > $2 OR (ended_at = started_at AND started_at >= $2))"
        ))
        .bind(to)
        .bind(from)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let meter: String = row.try_get(3)?;
                let meter = Meter::from_key(&meter)
                    .ok_or_else(|| LedgerError::Corrupt(format!("unknown meter {meter:?}")))?;
                let start: i64 = row.try_get(6)?;
                let end: Option<i64> = row.try_get(7)?;
                let last_seen: i64 = row.try_get(8)?;
                Ok(Usage {
                    tenant: row.try_get(0)?,
                    site: row.try_get(1)?,
                    region_class: row.try_get(2)?,
                    meter,
                    gpu_model: row.try_get(4)?,
                    amount: row.try_get(5)?,
                    start,
                    end: end.unwrap_or(last_seen.min(now)).max(start),
                })
            })
            .collect()
    }

    /// The open intervals of a kind, by object, with their amounts.
    pub async fn open_amounts(&self, kind: &str) -> Result<HashMap<String, i64>, LedgerError> {
        let rows =
            sqlx::query("SELECT source, amount FROM usage_intervals WHERE ended_at IS NULL AND kind = $1")
                .bind(kind)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
    }

    /// Every interval of an object, by key (for tests and audits).
    pub async fn intervals_of(&self, source: &str) -> Result<Vec<Recorded>, LedgerError> {
        let rows = sqlx::query(
            "SELECT key, meter, amount, started_at, ended_at, estimated FROM usage_intervals \
             WHERE source = $1 ORDER BY key",
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let meter: String = row.try_get(1)?;
                Ok(Recorded {
                    key: row.try_get(0)?,
                    meter: Meter::from_key(&meter)
                        .ok_or_else(|| LedgerError::Corrupt(format!("unknown meter {meter:?}")))?,
                    amount: row.try_get(2)?,
                    started_at: row.try_get(3)?,
                    ended_at: row.try_get(4)?,
                    estimated: row.try_get::<i64, _>(5)? != 0,
                })
            })
            .collect()
    }

    /// Replaces the tenant tree billing knows with `tenants`; a tenant that is gone keeps its
    /// row, so that its past bills still roll up under its parent.
    pub async fn sync_tenants(&self, tenants: &[TenantInfo]) -> Result<(), LedgerError> {
        let now = now();
        let mut tx = self.pool.begin().await?;
        for t in tenants {
            sqlx::query(
                "INSERT INTO tenants (name, display_name, parent, level, cost_center, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET \
                 display_name = excluded.display_name, parent = excluded.parent, level = excluded.level, \
                 cost_center = excluded.cost_center, updated_at = excluded.updated_at",
            )
            .bind(&t.name)
            .bind(&t.display_name)
            .bind(t.parent.as_deref())
            .bind(&t.level)
            .bind(t.cost_center.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The tenant tree as billing knows it.
    pub async fn tenants(&self) -> Result<HashMap<String, TenantInfo>, LedgerError> {
        let rows = sqlx::query("SELECT name, display_name, parent, level, cost_center FROM tenants")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| tenant_row(row).map(|t| (t.name.clone(), t))).collect()
    }

    /// Replaces the stored PriceBooks with `books` (name and JSON document) in one transaction.
    pub async fn sync_price_books(&self, books: &[(String, String)]) -> Result<(), LedgerError> {
        let now = now();
        let mut tx = self.pool.begin().await?;
        let stored: Vec<String> = sqlx::query("SELECT name FROM price_books")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        for name in stored.iter().filter(|name| !books.iter().any(|(n, _)| n == *name)) {
            sqlx::query("DELETE FROM price_books WHERE name = $1").bind(name).execute(&mut *tx).await?;
        }
        for (name, document) in books {
            sqlx::query(
                "INSERT INTO price_books (name, document, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at \
                 WHERE price_books.document <> excluded.document",
            )
            .bind(name)
            .bind(document)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored PriceBooks' JSON documents, by name.
    pub async fn price_books(&self) -> Result<Vec<String>, LedgerError> {
        let rows =
            sqlx::query("SELECT document FROM price_books ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    /// Bytes the ledger's database takes on disk.
    pub async fn size_bytes(&self) -> Result<i64, LedgerError> {
        let query = match self.backend {
            Backend::Sqlite => "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            Backend::Postgres => "SELECT pg_database_size(current_database())",
        };
        Ok(sqlx::query(query).fetch_one(&self.pool).await?.try_get(0)?)
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

pub(crate) fn tenant_row(row: &AnyRow) -> Result<TenantInfo, LedgerError> {
    Ok(TenantInfo {
        name: row.try_get("name")?,
        display_name: row.try_get("display_name")?,
        parent: row.try_get("parent")?,
        level: row.try_get("level")?,
        cost_center: row.try_get("cost_center")?,
    })
}

/// Now, in the ledger's clock.
pub fn now() -> Seconds {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as Seconds)
}

/// Inserts one interval; `on_conflict` says what a key already recorded does. Returns the
/// number of rows written.
async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    i: &Interval,
    on_conflict: &str,
) -> Result<u64, LedgerError> {
    let now = now();
    let done = sqlx::query(&format!(
        "INSERT INTO usage_intervals (key, source, kind, tenant, namespace, object, node, site, \
         region_class, pool, meter, gpu_model, amount, started_at, ended_at, last_seen_at, estimated, \
         recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT (key) {on_conflict}"
    ))
    .bind(&i.key)
    .bind(&i.source)
    .bind(&i.kind)
    .bind(&i.tenant)
    .bind(&i.namespace)
    .bind(&i.object)
    .bind(&i.node)
    .bind(&i.site)
    .bind(&i.region_class)
    .bind(&i.pool)
    .bind(i.meter.key())
    .bind(&i.gpu_model)
    .bind(i.amount)
    .bind(i.started_at)
    .bind(i.ended_at.map(|end| end.max(i.started_at)))
    .bind(now.max(i.started_at))
    .bind(i64::from(i.estimated))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***{}", &url[..scheme], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("postgres://billing:s3cret@db:5432/yiyun"), "postgres://billing:***@db:5432/yiyun");
        assert_eq!(redact("postgres://billing@db/yiyun"), "postgres://billing@db/yiyun");
        assert_eq!(redact("sqlite://ledger.db?mode=rwc"), "sqlite://ledger.db?mode=rwc");
    }
}
