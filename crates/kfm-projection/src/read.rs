//! The read side of the projections, for `kfm serve` with the PostGIS
//! backend: which table holds a version's layer, and its features by page,
//! by id, or all of them in batches.
//!
//! The API connects as KFM's API roles, never as the projector:
//! `kfm_api` for the catalog, generalised layers and the precise layers of
//! `public` datasets, and `kfm_api_precise` only for a precise layer in
//! `kfm_restricted`, which the API reads only when the policy's decision
//! allows precise coordinates. Every statement is built by `kfm-query`
//! (values bound as parameters) around a table name the catalog holds and
//! [`schema::qualified`] has checked.

use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use geojson::Feature;
use kfm_query::{Cursor, Filter, Param, Queryables, SortKeys, Sql};
use serde_json::{Map, Value};
use tokio_postgres::NoTls;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::ProjectionError;
use crate::connect::{PgTarget, describe};
use crate::geom;
use crate::load::PG_EPOCH_US;
use crate::schema::{self, API, API_PRECISE, CATALOG, FORMAT, Layer, RESTRICTED};

/// Statements a pooled connection keeps prepared before it starts over
/// (distinct filters make distinct statements; this bounds their memory).
const STATEMENTS_KEPT: usize = 256;

/// How the API reaches the projections.
pub struct ReaderConfig {
    pub target: PgTarget,
    /// `kfm_api`'s password (by reference in kfm.toml; none with trust
    /// or peer authentication).
    pub api_password: Option<String>,
    /// `kfm_api_precise`'s password.
    pub precise_password: Option<String>,
    /// Connections per role.
    pub pool_size: usize,
    /// The longest any one statement may run.
    pub statement_timeout: Duration,
}

/// Pools of connections as the two API roles.
pub struct Reader {
    api: Pool,
    precise: Pool,
}

/// One projected layer of a version, as the catalog names it.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRef {
    pub layer: Layer,
    pub schema: String,
    pub table: String,
    /// `"schema"."table"`, checked.
    qualified: String,
    pub rows: u64,
    pub queryables: Queryables,
    pub extent: Option<[f64; 4]>,
}

impl LayerRef {
    /// Whether reading it takes the precise role.
    pub fn restricted(&self) -> bool {
        self.schema == RESTRICTED
    }
}

/// A version's projection.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    pub version_id: String,
    pub temporal_property: Option<String>,
    pub layers: Vec<LayerRef>,
}

impl Projection {
    pub fn layer(&self, l: Layer) -> Option<&LayerRef> {
        self.layers.iter().find(|x| x.layer == l)
    }
}

/// A feature read back: its position and the feature.
pub struct Item {
    pub ord: i64,
    pub feature: Feature,
}

/// Any column, as the bytes PostgreSQL sent (EWKB for `geometry`, a
/// version byte and text for `jsonb`).
struct Bin<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Bin<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Bin(raw))
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// A query-language parameter in PostgreSQL's binary form, for the cast
/// the statement gives it.
#[derive(Debug)]
struct Bound<'a>(&'a Param);

impl ToSql for Bound<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        match self.0 {
            Param::Text(s) => out.put_slice(s.as_bytes()),
            Param::Float(f) => out.put_f64(*f),
            Param::Bool(b) => out.put_u8(u8::from(*b)),
            Param::Int(i) => out.put_i64(*i),
            Param::Time(t) => out.put_i64(t - PG_EPOCH_US),
            Param::Geom(g) => out.put_slice(g),
            Param::TextArray(v) => return v.to_sql(ty, out),
        }
        Ok(IsNull::No)
    }
    fn accepts(_ty: &Type) -> bool {
        // The statement casts every placeholder to the parameter's own
        // type (`Param::cast`); geometry's type id differs per database.
        true
    }
    to_sql_checked!();
}

fn pool(
    target: &PgTarget,
    user: &str,
    password: Option<&str>,
    c: &ReaderConfig,
) -> Result<Pool, ProjectionError> {
    // The administrator's URL, as the API role, with that role's password.
    let as_role = PgTarget {
        url: target.url.clone(),
        password: password.map(str::to_owned),
    };
    let mut config = crate::connect::config(&as_role, None)?;
    config.user(user);
    config.application_name("kfm-api");
    config.options(format!(
        "-c statement_timeout={} -c default_transaction_read_only=on",
        c.statement_timeout.as_millis()
    ));
    let mgr = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(c.pool_size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| ProjectionError::Connect(format!("the connection pool: {e}")))
}

fn pg(e: deadpool_postgres::PoolError, target: &str) -> ProjectionError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => ProjectionError::from(e),
        other => ProjectionError::Connect(format!("cannot reach PostgreSQL at {target}: {other}")),
    }
}

impl Reader {
    /// Pools for the two API roles. Connections open when first used; a
    /// check of each role is made here, so a server that cannot read its
    /// projections says so at start.
    pub async fn connect(c: &ReaderConfig) -> Result<Reader, ProjectionError> {
        let r = Reader {
            api: pool(&c.target, API, c.api_password.as_deref(), c)?,
            precise: pool(&c.target, API_PRECISE, c.precise_password.as_deref(), c)?,
        };
        let at = describe(&c.target, None);
        for (p, role) in [(&r.api, API), (&r.precise, API_PRECISE)] {
            let client = p.get().await.map_err(|e| match e {
                deadpool_postgres::PoolError::Backend(e) => ProjectionError::Connect(format!(
                    "cannot log in to PostgreSQL at {at} as {role}: {}; run `kfm projection run` once (as the database's administrator) so that KFM's roles exist, and give {role} a password by reference if the server asks for one",
                    ProjectionError::from(e)
                )),
                other => pg(other, &at),
            })?;
            client
                .query_one(&format!("SELECT count(*) FROM {CATALOG}.projections"), &[])
                .await
                .map_err(|e| {
                    ProjectionError::Setup(format!(
                        "{role} cannot read KFM's projection catalog at {at}: {}; run `kfm projection run` first",
                        ProjectionError::from(e)
                    ))
                })?;
        }
        Ok(r)
    }

    /// Whether the database answers the public role within `within`.
    pub async fn ping(&self, within: Duration) -> Result<(), ProjectionError> {
        let check = async {
            let client = self.api.get().await.map_err(|e| pg(e, "the database"))?;
            client.simple_query("SELECT 1").await?;
            Ok::<(), ProjectionError>(())
        };
        tokio::time::timeout(within, check)
            .await
            .map_err(|_| ProjectionError::Connect("no answer in time".into()))?
    }

    fn pool_for(&self, l: &LayerRef) -> &Pool {
        // Invariant: the precise role is used only for a layer in
        // kfm_restricted, which the API names only when the decision
        // allows precise coordinates; every other read is the public role's.
        if l.restricted() {
            &self.precise
        } else {
            &self.api
        }
    }

    /// The projection of `dataset` at the manifest a verified pointer
    /// names, if the projector has loaded it (in this build's format).
    pub async fn projection(
        &self,
        dataset: &str,
        manifest_digest: &str,
    ) -> Result<Option<Projection>, ProjectionError> {
        let client = self.api.get().await.map_err(|e| pg(e, "the catalog"))?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT l.layer, l.schema_name, l.table_name, l.rows, l.queryables::text, l.extent, l.format, p.temporal_property, p.version_id
                 FROM {CATALOG}.layers l JOIN {CATALOG}.projections p USING (dataset)
                 WHERE p.dataset = $1 AND p.manifest_digest = $2 ORDER BY l.layer"
            ))
            .await?;
        let rows = client.query(&stmt, &[&dataset, &manifest_digest]).await?;
        let mut out: Option<Projection> = None;
        for r in rows {
            let layer: String = r.try_get(0)?;
            let layer = Layer::parse(&layer)
                .ok_or_else(|| ProjectionError::Catalog(format!("unknown layer {layer:?}")))?;
            let (s, t): (String, String) = (r.try_get(1)?, r.try_get(2)?);
            let qualified = schema::qualified(&s, &t)?;
            if r.try_get::<_, i32>(6)? != FORMAT {
                // Loaded by an older projector: not readable as this
                // build reads tables, until the projector loads it again.
                return Ok(None);
            }
            let queryables: Option<String> = r.try_get(4)?;
            let queryables = serde_json::from_str(queryables.as_deref().unwrap_or("null"))
                .map_err(|e| ProjectionError::Catalog(format!("{s}.{t}: queryables: {e}")))?;
            let extent: Option<Vec<f64>> = r.try_get(5)?;
            let extent = match extent.as_deref() {
                None => None,
                Some([a, b, c, d]) => Some([*a, *b, *c, *d]),
                Some(_) => {
                    return Err(ProjectionError::Catalog(format!(
                        "{s}.{t}: an extent of other than four numbers"
                    )));
                }
            };
            let p = out.get_or_insert_with(|| Projection {
                version_id: String::new(),
                temporal_property: None,
                layers: Vec::new(),
            });
            p.version_id = r.try_get(8)?;
            p.temporal_property = r.try_get(7)?;
            p.layers.push(LayerRef {
                layer,
                schema: s,
                table: t,
                qualified,
                rows: r.try_get::<_, i64>(3)? as u64,
                queryables,
                extent,
            });
        }
        Ok(out)
    }

    async fn run(&self, l: &LayerRef, sql: &Sql) -> Result<Vec<Item>, ProjectionError> {
        let client = self
            .pool_for(l)
            .get()
            .await
            .map_err(|e| pg(e, &l.qualified))?;
        if client.statement_cache.size() > STATEMENTS_KEPT {
            client.statement_cache.clear();
        }
        let stmt = client.prepare_cached(&sql.text).await?;
        let bound: Vec<Bound<'_>> = sql.params.iter().map(Bound).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&stmt, &refs).await?;
        rows.iter().map(item).collect()
    }

    /// A page: the rows `filter` keeps, in `sort` order (then `ord`),
    /// after `after` (or skipping `offset`), at most `limit`; the
    /// properties in `redact` removed by the statement itself.
    #[allow(clippy::too_many_arguments)]
    pub async fn page(
        &self,
        l: &LayerRef,
        redact: &[String],
        filter: &Filter,
        sort: &SortKeys,
        after: Option<&Cursor>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<Item>, ProjectionError> {
        let mut sql = select(l, redact);
        filter.to_sql(&mut sql);
        if let Some(c) = after {
            let a = sort.after_sql(c, &mut sql);
            sql.push(" AND ").push(&a);
        }
        let order = sort.order_sql(&mut sql);
        sql.push(" ").push(&order).push(" LIMIT ");
        sql.push_param(Param::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        if offset > 0 {
            sql.push(" OFFSET ");
            sql.push_param(Param::Int(i64::try_from(offset).unwrap_or(i64::MAX)));
        }
        self.run(l, &sql).await
    }

    /// One feature by its id.
    pub async fn by_id(
        &self,
        l: &LayerRef,
        redact: &[String],
        fid: &str,
    ) -> Result<Option<Item>, ProjectionError> {
        let mut sql = select(l, redact);
        sql.push("fid = ");
        sql.push_param(Param::Text(fid.to_owned()));
        Ok(self.run(l, &sql).await?.into_iter().next())
    }

    /// Up to `n` features after position `after` (-1: from the start), in
    /// artifact order: exports read a layer in such batches, so that no
    /// statement holds a table for the length of a download.
    pub async fn batch(
        &self,
        l: &LayerRef,
        redact: &[String],
        after: i64,
        n: u64,
    ) -> Result<Vec<Item>, ProjectionError> {
        let mut sql = select(l, redact);
        sql.push("ord > ");
        sql.push_param(Param::Int(after));
        sql.push(" ORDER BY ord LIMIT ");
        sql.push_param(Param::Int(i64::try_from(n).unwrap_or(i64::MAX)));
        self.run(l, &sql).await
    }
}

impl Reader {
    /// One Mapbox Vector Tile of a layer, drawn by PostGIS (`ST_AsMVT`):
    /// the rows whose geometry meets tile `z/x/y` of WebMercatorQuad with
    /// a `buffer` of tile units around it, moved into tile space, clipped
    /// and snapped (`ST_AsMVTGeom`, extent `extent`), each with its
    /// position as the MVT id, its KFM id as the `id_key` property and its
    /// properties (the redacted ones removed by the statement itself).
    /// Zero rows make a zero-byte tile.
    #[allow(clippy::too_many_arguments)]
    pub async fn tile(
        &self,
        l: &LayerRef,
        redact: &[String],
        name: &str,
        id_key: &str,
        (z, x, y): (u8, u32, u32),
        extent: u32,
        buffer: u32,
    ) -> Result<Vec<u8>, ProjectionError> {
        let client = self
            .pool_for(l)
            .get()
            .await
            .map_err(|e| pg(e, &l.qualified))?;
        let mut sql = Sql::new();
        let props = if redact.is_empty() {
            "props".to_owned()
        } else {
            let r = sql.bind(Param::TextArray(redact.to_vec()));
            format!("props - {r}")
        };
        let (zp, xp, yp) = (
            sql.bind(Param::Int(i64::from(z))),
            sql.bind(Param::Int(i64::from(x))),
            sql.bind(Param::Int(i64::from(y))),
        );
        let e = sql.bind(Param::Int(i64::from(extent)));
        let b = sql.bind(Param::Int(i64::from(buffer)));
        let n = sql.bind(Param::Text(name.to_owned()));
        let k = sql.bind(Param::Text(id_key.to_owned()));
        let env = format!("ST_TileEnvelope({zp}::int, {xp}::int, {yp}::int)");
        // Web Mercator ends at ±85.0511°: a geometry reaching beyond is
        // cut there first, so that ST_Transform never meets a pole.
        sql.push(&format!(
            "SELECT ST_AsMVT(t.*, {n}::text, {e}::int, 'geom', 'ord') FROM (
               SELECT ord, jsonb_build_object({k}::text, fid) || COALESCE({props}, '{{}}'::jsonb) AS props,
                 ST_AsMVTGeom(ST_Transform(
                     CASE WHEN ST_YMax(geom) > 85.0511 OR ST_YMin(geom) < -85.0511
                          THEN ST_ClipByBox2D(geom, ST_MakeEnvelope(-180, -85.0511, 180, 85.0511, 4326))
                          ELSE geom END, 3857),
                   {env}, {e}::int, {b}::int, true) AS geom
               FROM {} WHERE geom && ST_Transform(ST_TileEnvelope({zp}::int, {xp}::int, {yp}::int, margin => ({b}::float8 / {e}::float8)), 4326)
             ) t WHERE t.geom IS NOT NULL",
            l.qualified
        ));
        let stmt = client.prepare_cached(&sql.text).await?;
        let bound: Vec<Bound<'_>> = sql.params.iter().map(Bound).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        let row = client.query_one(&stmt, &refs).await?;
        // ST_AsMVT over no rows: no tile at all, drawn as zero bytes. Said
        // as a match, not a default: NULL means exactly "nothing here".
        let tile: Option<Vec<u8>> = row.try_get(0)?;
        #[allow(clippy::manual_unwrap_or_default)]
        Ok(match tile {
            Some(t) => t,
            None => Vec::new(),
        })
    }
}

/// `SELECT … FROM <table> WHERE `: the columns a feature is built from,
/// the properties a policy obligation redacts already removed.
///
/// Invariant: a redacted property never leaves the database; the API
/// removes it again when it shapes the page (defence in depth).
fn select(l: &LayerRef, redact: &[String]) -> Sql {
    let mut sql = Sql::new();
    sql.push("SELECT ord, fid, fid_numeric, geom, ");
    if redact.is_empty() {
        sql.push("props");
    } else {
        let r = sql.bind(Param::TextArray(redact.to_vec()));
        sql.push(&format!("props - {r}"));
    }
    sql.push(&format!(" FROM {} WHERE ", l.qualified));
    sql
}

/// A row back into the feature the artifact held: the id as it was
/// written (text or number), the geometry from its EWKB (bit for bit),
/// the properties in their normal form (`kfm_query::normal`).
fn item(r: &tokio_postgres::Row) -> Result<Item, ProjectionError> {
    let ord: i64 = r.try_get(0)?;
    let fid: &str = r.try_get(1)?;
    let numeric: bool = r.try_get(2)?;
    let geom: Option<Bin<'_>> = r.try_get(3)?;
    let props: Option<Bin<'_>> = r.try_get(4)?;
    let bad = |what: String| ProjectionError::Catalog(format!("row {ord}: {what}"));
    let id = if numeric {
        geojson::feature::Id::Number(
            fid.parse::<serde_json::Number>()
                .map_err(|e| bad(format!("the numeric id {fid:?}: {e}")))?,
        )
    } else {
        geojson::feature::Id::String(fid.to_owned())
    };
    let geometry = match geom {
        Some(g) => Some(geom::decode(g.0).map_err(|e| bad(e.to_string()))?),
        None => None,
    };
    let properties = match props {
        Some(p) => {
            let text = match p.0.split_first() {
                Some((1, rest)) => rest,
                _ => return Err(bad("props is not jsonb version 1".into())),
            };
            let mut m: Map<String, Value> =
                serde_json::from_slice(text).map_err(|e| bad(format!("props: {e}")))?;
            kfm_query::normal::object(&mut m);
            Some(m)
        }
        None => None,
    };
    Ok(Item {
        ord,
        feature: Feature {
            bbox: None,
            geometry,
            id: Some(id),
            properties,
            foreign_members: None,
        },
    })
}
