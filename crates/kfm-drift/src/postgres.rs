//! PostgreSQL: extensions, roles, schema and table privileges, row-level
//! security and its policies, read from the system catalogs (`pg_roles`,
//! `pg_namespace`, `pg_class`, `pg_policies`, `aclexplode`) of the managed
//! database.
//!
//! This is the membrane inside the database: the public role must never
//! hold a privilege on a precise schema or its tables, and every table
//! there must have row-level security with policies only for the roles
//! allowed to read it. Drift of that kind is critical and sorts first.
//!
//! Tables come and go with releases, so git judges them by their schema's
//! rule (`tables:`), not by name: every table found live in a schema with
//! a rule is compared with it. The owner's own rights are implied by
//! ownership and never compared (server-filled noise).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kfm_infra::platform::{Ensure, Platform, Postgres};
use serde_json::{Map, Value, json};
use tokio_postgres::{Client, NoTls};

use crate::{DriftError, ENGINE_TIMEOUT, Engine, Grade, Observed, Severity, Want, sorted, sources};

/// How to reach PostgreSQL.
#[derive(Clone)]
pub struct Conn {
    pub dsn: String,
    pub password: Option<String>,
    /// The managed database (the connection's `dbname` is replaced by it).
    pub database: String,
}

impl std::fmt::Debug for Conn {
    // Never the password, not even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("dsn", &self.dsn)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> DriftError {
    DriftError::engine(Engine::Postgres, what, e)
}

/// The server's own message where there is one (the driver's `Display`
/// says only "db error").
fn pg_msg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(x) = src {
                s.push_str(&format!(": {x}"));
                src = x.source();
            }
            s
        }
    }
}

/// Connects to the managed database within [`ENGINE_TIMEOUT`].
pub async fn connect(c: &Conn) -> Result<Client, DriftError> {
    let mut cfg: tokio_postgres::Config = c.dsn.parse().map_err(|e| {
        DriftError::Config(format!(
            "postgres: the connection string does not parse: {e}"
        ))
    })?;
    cfg.dbname(&c.database);
    cfg.connect_timeout(ENGINE_TIMEOUT);
    cfg.application_name("kfm-drift");
    if let Some(p) = &c.password {
        cfg.password(p);
    }
    let (client, conn) = tokio::time::timeout(ENGINE_TIMEOUT, cfg.connect(NoTls))
        .await
        .map_err(|_| {
            DriftError::unreachable(Engine::Postgres, format!("no answer in {ENGINE_TIMEOUT:?}"))
        })?
        .map_err(|e| {
            DriftError::unreachable(
                Engine::Postgres,
                format!("database {}: {}", c.database, pg_msg(&e)),
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "drift: PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A role name in SQL: `PUBLIC` as the keyword, anything else quoted.
fn role(r: &str) -> String {
    if r == "PUBLIC" {
        "PUBLIC".into()
    } else {
        quote(r)
    }
}

/// An identifier in SQL, quoted (a live name may be anything).
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The roles the public reads connect as (and PUBLIC itself).
fn public_roles(pg: &Postgres) -> Arc<BTreeSet<String>> {
    Arc::new(
        pg.roles
            .iter()
            .filter(|r| r.public)
            .map(|r| r.name.clone())
            .chain(["PUBLIC".to_owned()])
            .collect(),
    )
}

/// Whether a privileges or policies value lets one of `public` in.
fn admits_public(v: &Value, public: &BTreeSet<String>) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| {
            public.contains(k) || v.get("roles").is_some_and(|r| admits_public(r, public))
        }),
        Value::Array(xs) => xs
            .iter()
            .any(|x| x.as_str().is_some_and(|s| public.contains(s))),
        _ => false,
    }
}

/// `{grantee: [privilege, …]}`, grantees other than the owner, from
/// `json_agg(json_build_array(grantee, privilege))`.
fn privileges(v: Option<Value>) -> Value {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Some(Value::Array(xs)) = v {
        for x in xs {
            if let (Some(g), Some(p)) = (
                x.get(0).and_then(Value::as_str),
                x.get(1).and_then(Value::as_str),
            ) {
                m.entry(g.to_owned()).or_default().insert(p.to_owned());
            }
        }
    }
    Value::Object(m.into_iter().map(|(k, v)| (k, sorted(v))).collect())
}

const ACL: &str = "COALESCE((SELECT json_agg(json_build_array(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type)) FROM aclexplode({acl}) a WHERE a.grantee <> {owner}), '[]'::json)::text";

/// A JSON column read as text (the driver's JSON support is a feature not
/// built here).
fn json_col(r: &tokio_postgres::Row, i: usize, what: &str) -> Result<Value, DriftError> {
    let t: String = r.try_get(i).map_err(|e| err(what, e))?;
    serde_json::from_str(&t).map_err(|e| err(what, e))
}

/// Reads the catalogs.
pub async fn observe(p: &Platform, c: &Conn) -> Result<Observed, DriftError> {
    let Some(pg) = &p.postgres else {
        return Ok(Observed::default());
    };
    let client = connect(c).await?;
    tokio::time::timeout(ENGINE_TIMEOUT * 3, observe_with(p, pg, &client))
        .await
        .map_err(|_| {
            DriftError::unreachable(Engine::Postgres, "reading the catalogs took too long")
        })?
}

async fn observe_with(
    p: &Platform,
    pg: &Postgres,
    client: &Client,
) -> Result<Observed, DriftError> {
    let src = sources(p);
    let public = public_roles(pg);
    let mut o = Observed::default();

    // Extensions.
    let installed: BTreeSet<String> = client
        .query("SELECT extname FROM pg_extension", &[])
        .await
        .map_err(|e| err("pg_extension", pg_msg(&e)))?
        .iter()
        .filter_map(|r| r.try_get(0).ok())
        .collect();
    for e in &pg.extensions {
        let resource = format!("extension/{}", e.name);
        if installed.contains(&e.name) {
            o.live.insert(resource.clone(), Map::new());
        }
        o.wants.push(Want {
            engine: Engine::Postgres,
            resource,
            ensure: e.ensure,
            fields: Map::new(),
            source: src.clone(),
            grade: crate::medium(),
        });
    }

    // Roles.
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in client
        .query(
            "SELECT r.rolname::text, m.rolname::text FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.member JOIN pg_roles m ON m.oid = am.roleid",
            &[],
        )
        .await
        .map_err(|e| err("pg_auth_members", pg_msg(&e)))?
    {
        let (who, of): (String, String) = (
            r.try_get(0).map_err(|e| err("pg_auth_members", pg_msg(&e)))?,
            r.try_get(1).map_err(|e| err("pg_auth_members", pg_msg(&e)))?,
        );
        members.entry(who).or_default().push(of);
    }
    let mut live_roles = BTreeSet::new();
    for r in client
        .query(
            "SELECT rolname::text, rolcanlogin, rolinherit, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles",
            &[],
        )
        .await
        .map_err(|e| err("pg_roles", pg_msg(&e)))?
    {
        let name: String = r.try_get(0).map_err(|e| err("pg_roles", pg_msg(&e)))?;
        let b = |i: usize| -> Result<Value, DriftError> {
            Ok(Value::Bool(r.try_get::<_, bool>(i).map_err(|e| err("pg_roles", pg_msg(&e)))?))
        };
        let mut m = Map::new();
        for (i, k) in ["login", "inherit", "superuser", "createdb", "createrole", "replication", "bypassrls"]
            .iter()
            .enumerate()
        {
            m.insert((*k).into(), b(i + 1)?);
        }
        m.insert(
            "member_of".into(),
            sorted(members.get(&name).cloned().unwrap_or_default()),
        );
        live_roles.insert(name.clone());
        o.live.insert(format!("role/{name}"), m);
    }
    for r in &pg.roles {
        let mut f = Map::new();
        if r.ensure == Ensure::Present {
            for (k, v) in [
                ("login", r.login),
                ("inherit", r.inherit),
                ("superuser", r.superuser),
                ("createdb", r.createdb),
                ("createrole", r.createrole),
                ("replication", r.replication),
                ("bypassrls", r.bypassrls),
            ] {
                f.insert(k.into(), Value::Bool(v));
            }
            f.insert("member_of".into(), sorted(r.member_of.iter().cloned()));
        }
        let is_public = r.public;
        o.wants.push(Want {
            engine: Engine::Postgres,
            resource: format!("role/{}", r.name),
            ensure: r.ensure,
            fields: f,
            source: src.clone(),
            grade: Grade::new(move |field, _, live| match field {
                "superuser" | "bypassrls" if live == &Value::Bool(true) => Severity::Critical,
                "member_of" if is_public => Severity::Critical,
                "createrole" | "replication" | "member_of" => Severity::High,
                _ => Severity::Medium,
            }),
        });
    }

    // Schemas.
    let names: Vec<String> = pg.schemas.iter().map(|s| s.name.clone()).collect();
    let schema_sql = format!(
        "SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text, {} FROM pg_namespace n",
        ACL.replace("{acl}", "n.nspacl")
            .replace("{owner}", "n.nspowner")
    );
    let mut live_schemas = BTreeSet::new();
    for r in client
        .query(&schema_sql, &[])
        .await
        .map_err(|e| err("pg_namespace", pg_msg(&e)))?
    {
        let name: String = r.try_get(0).map_err(|e| err("pg_namespace", pg_msg(&e)))?;
        let owner: String = r.try_get(1).map_err(|e| err("pg_namespace", pg_msg(&e)))?;
        let acl = json_col(&r, 2, "pg_namespace")?;
        let mut m = Map::new();
        m.insert("owner".into(), json!(owner));
        m.insert("privileges".into(), privileges(Some(acl)));
        live_schemas.insert(name.clone());
        if names.contains(&name) {
            o.live.insert(format!("schema/{name}"), m);
        }
    }
    for s in &pg.schemas {
        let mut f = Map::new();
        if let Some(owner) = &s.owner {
            f.insert("owner".into(), json!(owner));
        }
        f.insert(
            "privileges".into(),
            Value::Object(
                s.usage
                    .iter()
                    .map(|r| (r.clone(), json!(["USAGE"])))
                    .collect(),
            ),
        );
        let (precise, public) = (s.precise, public.clone());
        o.wants.push(Want {
            engine: Engine::Postgres,
            resource: format!("schema/{}", s.name),
            ensure: Ensure::Present,
            fields: f,
            source: src.clone(),
            grade: Grade::new(move |field, _, live| match field {
                "privileges" if precise && admits_public(live, &public) => Severity::Critical,
                "privileges" | "owner" => Severity::High,
                _ => Severity::Medium,
            }),
        });
    }

    // Tables of schemas with a rule.
    let ruled: Vec<String> = pg
        .schemas
        .iter()
        .filter(|s| s.tables.is_some())
        .map(|s| s.name.clone())
        .collect();
    let mut policies: BTreeMap<(String, String), Map<String, Value>> = BTreeMap::new();
    for r in client
        .query(
            "SELECT schemaname::text, tablename::text, policyname::text, cmd, roles::text[] FROM pg_policies WHERE schemaname = ANY($1)",
            &[&ruled],
        )
        .await
        .map_err(|e| err("pg_policies", pg_msg(&e)))?
    {
        let key: (String, String) = (
            r.try_get(0).map_err(|e| err("pg_policies", pg_msg(&e)))?,
            r.try_get(1).map_err(|e| err("pg_policies", pg_msg(&e)))?,
        );
        let name: String = r.try_get(2).map_err(|e| err("pg_policies", pg_msg(&e)))?;
        let cmd: String = r.try_get(3).map_err(|e| err("pg_policies", pg_msg(&e)))?;
        let roles: Vec<String> = r.try_get(4).map_err(|e| err("pg_policies", pg_msg(&e)))?;
        let roles = roles
            .into_iter()
            .map(|r| if r == "public" { "PUBLIC".to_owned() } else { r });
        policies
            .entry(key)
            .or_default()
            .insert(name, json!({"cmd": cmd, "roles": sorted(roles)}));
    }
    let table_sql = format!(
        "SELECT n.nspname::text, c.relname::text, c.relrowsecurity, {} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname = ANY($1)",
        ACL.replace("{acl}", "c.relacl")
            .replace("{owner}", "c.relowner")
    );
    for r in client
        .query(&table_sql, &[&ruled])
        .await
        .map_err(|e| err("pg_class", pg_msg(&e)))?
    {
        let schema: String = r.try_get(0).map_err(|e| err("pg_class", pg_msg(&e)))?;
        let table: String = r.try_get(1).map_err(|e| err("pg_class", pg_msg(&e)))?;
        let rls: bool = r.try_get(2).map_err(|e| err("pg_class", pg_msg(&e)))?;
        let acl = json_col(&r, 3, "pg_class")?;
        let Some(s) = pg.schemas.iter().find(|s| s.name == schema) else {
            continue;
        };
        let Some(rule) = &s.tables else { continue };
        let resource = format!("table/{schema}.{table}");
        let mut m = Map::new();
        m.insert("privileges".into(), privileges(Some(acl)));
        m.insert("row_level_security".into(), json!(rls));
        m.insert(
            "policies".into(),
            Value::Object(
                policies
                    .remove(&(schema.clone(), table.clone()))
                    .unwrap_or_default(),
            ),
        );
        o.live.insert(resource.clone(), m);
        let mut f = Map::new();
        f.insert(
            "privileges".into(),
            Value::Object(
                rule.select
                    .iter()
                    .map(|r| (r.clone(), json!(["SELECT"])))
                    .collect(),
            ),
        );
        if rule.row_level_security {
            f.insert("row_level_security".into(), json!(true));
            let mut pols = Map::new();
            if !rule.select.is_empty() {
                pols.insert(
                    "read".into(),
                    json!({"cmd": "SELECT", "roles": sorted(rule.select.iter().cloned())}),
                );
            }
            f.insert("policies".into(), Value::Object(pols));
        }
        let (precise, public) = (s.precise, public.clone());
        o.wants.push(Want {
            engine: Engine::Postgres,
            resource,
            ensure: Ensure::Present,
            fields: f,
            source: src.clone(),
            grade: Grade::new(move |field, _, live| match field {
                // Invariant: precise rows readable by the public role are
                // the worst drift there is, reported first.
                "privileges" | "policies" if precise && admits_public(live, &public) => {
                    Severity::Critical
                }
                "row_level_security" if precise => Severity::Critical,
                _ => Severity::High,
            }),
        });
    }

    // What git does not name, under an owned prefix.
    let owned = |n: &str| pg.owns.iter().any(|p| n.starts_with(p.as_str()));
    for r in &live_roles {
        if owned(r) && !pg.roles.iter().any(|x| &x.name == r) {
            o.unmanaged.push(format!("role/{r}"));
        }
    }
    for s in &live_schemas {
        if owned(s) && !names.contains(s) {
            o.unmanaged.push(format!("schema/{s}"));
        }
    }
    Ok(o)
}

fn str_set(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_array)
        .map(|xs| {
            xs.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// REVOKE what is granted beyond `want`, GRANT what `want` lacks.
fn privilege_sql(on: &str, want: Option<&Value>, live: Option<&Value>) -> Vec<String> {
    let empty = Map::new();
    let want = want.and_then(Value::as_object).unwrap_or(&empty);
    let live = live.and_then(Value::as_object).unwrap_or(&empty);
    let mut out = Vec::new();
    for (g, privs) in live {
        let keep = str_set(want.get(g));
        for p in str_set(Some(privs)) {
            if !keep.contains(&p) {
                out.push(format!("REVOKE {p} ON {on} FROM {}", role(g)));
            }
        }
    }
    for (g, privs) in want {
        let have = str_set(live.get(g));
        for p in str_set(Some(privs)) {
            if !have.contains(&p) {
                out.push(format!("GRANT {p} ON {on} TO {}", role(g)));
            }
        }
    }
    out
}

fn checked_priv(p: &str) -> Result<&str, DriftError> {
    // Privilege names come from the catalog or from git's fixed set.
    const KNOWN: [&str; 12] = [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "TRUNCATE",
        "REFERENCES",
        "TRIGGER",
        "USAGE",
        "CREATE",
        "CONNECT",
        "TEMPORARY",
        "EXECUTE",
    ];
    KNOWN
        .contains(&p)
        .then_some(p)
        .ok_or_else(|| DriftError::Config(format!("unknown privilege {p:?}")))
}

/// The statements that restore one resource (run in one transaction).
pub fn plan(
    p: &Platform,
    w: &Want,
    live: Option<&Map<String, Value>>,
) -> Result<Vec<String>, DriftError> {
    let pg = p
        .postgres
        .as_ref()
        .ok_or_else(|| DriftError::Config("postgres: not in the desired state".into()))?;
    let (kind, name) = w.resource.split_once('/').unwrap_or(("", &w.resource));
    let mut sql = Vec::new();
    match kind {
        "extension" => match w.ensure {
            Ensure::Present => sql.push(format!("CREATE EXTENSION IF NOT EXISTS {}", quote(name))),
            Ensure::Absent => sql.push(format!("DROP EXTENSION IF EXISTS {}", quote(name))),
        },
        "role" => {
            let r = pg
                .roles
                .iter()
                .find(|r| r.name == name)
                .ok_or_else(|| DriftError::Config(format!("{}: not in git", w.resource)))?;
            if r.ensure == Ensure::Absent {
                sql.push(format!("DROP ROLE IF EXISTS {}", quote(name)));
                return Ok(sql);
            }
            let attr = |on: bool, word: &str| {
                if on {
                    word.to_owned()
                } else {
                    format!("NO{word}")
                }
            };
            let attrs = [
                attr(r.login, "LOGIN"),
                attr(r.inherit, "INHERIT"),
                attr(r.superuser, "SUPERUSER"),
                attr(r.createdb, "CREATEDB"),
                attr(r.createrole, "CREATEROLE"),
                attr(r.replication, "REPLICATION"),
                attr(r.bypassrls, "BYPASSRLS"),
            ]
            .join(" ");
            match live {
                None => sql.push(format!("CREATE ROLE {} {attrs}", quote(name))),
                Some(_) => sql.push(format!("ALTER ROLE {} {attrs}", quote(name))),
            }
            let have = str_set(live.and_then(|l| l.get("member_of")));
            let want: BTreeSet<String> = r.member_of.iter().cloned().collect();
            for m in have.difference(&want) {
                sql.push(format!("REVOKE {} FROM {}", quote(m), quote(name)));
            }
            for m in want.difference(&have) {
                sql.push(format!("GRANT {} TO {}", quote(m), quote(name)));
            }
        }
        "schema" => {
            let on = format!("SCHEMA {}", quote(name));
            match live {
                None => {
                    let owner = w.fields.get("owner").and_then(Value::as_str);
                    sql.push(match owner {
                        Some(o) => {
                            format!("CREATE SCHEMA {} AUTHORIZATION {}", quote(name), quote(o))
                        }
                        None => format!("CREATE SCHEMA {}", quote(name)),
                    });
                }
                Some(l) => {
                    if let Some(o) = w.fields.get("owner").and_then(Value::as_str)
                        && l.get("owner").and_then(Value::as_str) != Some(o)
                    {
                        sql.push(format!(
                            "ALTER SCHEMA {} OWNER TO {}",
                            quote(name),
                            quote(o)
                        ));
                    }
                }
            }
            sql.extend(privilege_sql(
                &on,
                w.fields.get("privileges"),
                live.and_then(|l| l.get("privileges")),
            ));
        }
        "table" => {
            let (schema, table) = name
                .split_once('.')
                .ok_or_else(|| DriftError::Config(format!("{}: not schema.table", w.resource)))?;
            let on = format!("{}.{}", quote(schema), quote(table));
            let l = live.ok_or_else(|| {
                DriftError::Config(format!(
                    "{}: tables are judged by rule and never created by drift",
                    w.resource
                ))
            })?;
            sql.extend(privilege_sql(
                &on,
                w.fields.get("privileges"),
                l.get("privileges"),
            ));
            if w.fields.get("row_level_security") == Some(&Value::Bool(true))
                && l.get("row_level_security") != Some(&Value::Bool(true))
            {
                sql.push(format!("ALTER TABLE {on} ENABLE ROW LEVEL SECURITY"));
            }
            if let Some(Value::Object(want)) = w.fields.get("policies") {
                let empty = Map::new();
                let have = l
                    .get("policies")
                    .and_then(Value::as_object)
                    .unwrap_or(&empty);
                for (pname, pv) in have {
                    if want.get(pname) != Some(pv) {
                        sql.push(format!("DROP POLICY {} ON {on}", quote(pname)));
                    }
                }
                for (pname, pv) in want {
                    if have.get(pname) != Some(pv) {
                        let roles: Vec<String> =
                            str_set(pv.get("roles")).iter().map(|r| role(r)).collect();
                        sql.push(format!(
                            "CREATE POLICY {} ON {on} FOR SELECT TO {} USING (true)",
                            quote(pname),
                            roles.join(", ")
                        ));
                    }
                }
            }
        }
        _ => {
            return Err(DriftError::Config(format!(
                "{}: not a PostgreSQL resource",
                w.resource
            )));
        }
    }
    // Privilege words are interpolated: only known ones.
    for s in &sql {
        if let Some(rest) = s
            .strip_prefix("REVOKE ")
            .or_else(|| s.strip_prefix("GRANT "))
            && rest.contains(" ON ")
        {
            checked_priv(rest.split(' ').next().unwrap_or(""))?;
        }
    }
    Ok(sql)
}

/// Restores one resource in one transaction. Returns the statements run.
pub async fn fix(
    p: &Platform,
    c: &Conn,
    w: &Want,
    live: Option<&Map<String, Value>>,
) -> Result<Vec<String>, DriftError> {
    let sql = plan(p, w, live)?;
    let mut client = connect(c).await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| err(&w.resource, pg_msg(&e)))?;
    for s in &sql {
        tx.batch_execute(s)
            .await
            .map_err(|e| err(&w.resource, format!("{s}: {}", pg_msg(&e))))?;
    }
    tx.commit()
        .await
        .map_err(|e| err(&w.resource, pg_msg(&e)))?;
    Ok(sql)
}
