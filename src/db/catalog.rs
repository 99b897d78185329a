//! Reads a database's schema from PostgreSQL's catalogs for `envctl diff`: one query per kind of
//! object (13 round trips, whatever the number of objects), each returning name, part and
//! properties as JSON. Definitions come from the server's own deparsers (`pg_get_indexdef`,
//! `pg_get_constraintdef`, `pg_get_viewdef`, …), names from `format('%I')`, so the result depends
//! on neither oids, creation order nor column positions. Left out: system schemas, envctl's
//! ledger schema (`envctl`), and whatever an extension brings (the extension itself is listed).
//! Owners and privileges are left out too: they differ between environments by design.

use sqlx::PgConnection;

use crate::model::schema::{ObjectKind, PartKind, Properties, Schema};
use crate::sql::SqlError;

use super::DbError;

/// A namespace envctl compares: not PostgreSQL's, not envctl's ledger.
const USER_SCHEMA: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'envctl') \
     AND n.nspname NOT LIKE 'pg\\_%'";

/// Not a member of an extension (`classid` is the member's catalog).
fn not_extension_member(classid: &str, objid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{classid}'::regclass \
         AND d.objid = {objid} AND d.deptype = 'e')"
    )
}

/// What each query reads: the object kind it yields (by the query's own `kind` column where one
/// query reads several), or the part kind of a table's parts.
#[derive(Clone, Copy)]
enum Reads {
    Objects,
    Parts(PartKind),
}

/// The queries, each returning `(kind text, name text, part text NULL, properties json text)`.
fn queries() -> Vec<(&'static str, Reads, String)> {
    let mut queries = object_queries();
    queries.extend(part_queries());
    queries
}

/// Not a member of an extension, for `pg_class` rows aliased `c`.
fn class_filter() -> String {
    not_extension_member("pg_class", "c.oid")
}

/// Schemas, extensions, types, sequences, relations and routines.
fn object_queries() -> Vec<(&'static str, Reads, String)> {
    let class = class_filter();
    let relation_name = "format('%I.%I', n.nspname, c.relname)";
    vec![
        (
            "schemas",
            Reads::Objects,
            format!(
                "SELECT 'schema', format('%I', n.nspname), NULL::text, '{{}}'
                 FROM pg_namespace n WHERE {USER_SCHEMA} AND {}",
                not_extension_member("pg_namespace", "n.oid")
            ),
        ),
        (
            "extensions",
            Reads::Objects,
            "SELECT 'extension', format('%I', e.extname), NULL::text,
                    json_build_object('version', e.extversion, 'schema', n.nspname)::text
             FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
                .to_owned(),
        ),
        (
            "enums",
            Reads::Objects,
            format!(
                "SELECT 'enum', format('%I.%I', n.nspname, t.typname), NULL::text,
                        json_build_object('labels', (SELECT string_agg(quote_literal(e.enumlabel), ', '
                            ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid))::text
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                 WHERE t.typtype = 'e' AND {USER_SCHEMA} AND {}",
                not_extension_member("pg_type", "t.oid")
            ),
        ),
        (
            "domains",
            Reads::Objects,
            format!(
                "SELECT 'domain', format('%I.%I', n.nspname, t.typname), NULL::text,
                        json_build_object(
                            'type', format_type(t.typbasetype, t.typtypmod),
                            'not null', CASE WHEN t.typnotnull THEN 'yes' END,
                            'default', t.typdefault,
                            'constraints', (SELECT string_agg(format('%I %s', k.conname,
                                pg_get_constraintdef(k.oid, true)), '; ' ORDER BY k.conname)
                                FROM pg_constraint k WHERE k.contypid = t.oid))::text
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                 WHERE t.typtype = 'd' AND {USER_SCHEMA} AND {}",
                not_extension_member("pg_type", "t.oid")
            ),
        ),
        (
            "sequences",
            Reads::Objects,
            format!(
                "SELECT 'sequence', {relation_name}, NULL::text,
                        json_build_object('type', format_type(s.seqtypid, NULL),
                            'start', s.seqstart::text, 'increment', s.seqincrement::text,
                            'min', s.seqmin::text, 'max', s.seqmax::text,
                            'cycle', CASE WHEN s.seqcycle THEN 'yes' END)::text
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_sequence s ON s.seqrelid = c.oid
                 WHERE c.relkind = 'S' AND {USER_SCHEMA} AND {class}
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                       AND d.objid = c.oid AND d.deptype = 'i')"
            ),
        ),
        (
            "tables and views",
            Reads::Objects,
            format!(
                "SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized_view'
                            ELSE 'table' END,
                        {relation_name}, NULL::text,
                        json_build_object(
                            'partitioned by', CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
                            'partition of', CASE WHEN c.relispartition THEN (SELECT format('%I.%I %s',
                                pn.nspname, p.relname, pg_get_expr(c.relpartbound, c.oid))
                                FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
                                JOIN pg_namespace pn ON pn.oid = p.relnamespace
                                WHERE i.inhrelid = c.oid) END,
                            'unlogged', CASE WHEN c.relpersistence = 'u' THEN 'yes' END,
                            'row level security', CASE WHEN c.relrowsecurity THEN
                                CASE WHEN c.relforcerowsecurity THEN 'forced' ELSE 'enabled' END END,
                            'definition', CASE WHEN c.relkind IN ('v', 'm')
                                THEN pg_get_viewdef(c.oid, true) END)::text
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p', 'v', 'm') AND {USER_SCHEMA} AND {class}"
            ),
        ),
        (
            "functions and procedures",
            Reads::Objects,
            format!(
                "SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END,
                        format('%I.%I(%s)', n.nspname, p.proname,
                            pg_get_function_identity_arguments(p.oid)), NULL::text,
                        json_build_object(
                            'returns', CASE WHEN p.prokind <> 'p' THEN pg_get_function_result(p.oid) END,
                            'language', l.lanname,
                            'volatility', CASE p.provolatile WHEN 'i' THEN 'immutable'
                                WHEN 's' THEN 'stable' ELSE 'volatile' END,
                            'security definer', CASE WHEN p.prosecdef THEN 'yes' END,
                            'definition md5', md5(pg_get_functiondef(p.oid)))::text
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 JOIN pg_language l ON l.oid = p.prolang
                 WHERE p.prokind IN ('f', 'p') AND {USER_SCHEMA} AND {}
                   -- Made by PostgreSQL with another object (a range type's constructors).
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                        WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                          AND d.deptype = 'i')",
                not_extension_member("pg_proc", "p.oid")
            ),
        ),
    ]
}

/// The parts of tables and materialized views.
fn part_queries() -> Vec<(&'static str, Reads, String)> {
    let class = class_filter();
    let relation_name = "format('%I.%I', n.nspname, c.relname)";
    let owner_kind = "CASE c.relkind WHEN 'm' THEN 'materialized_view' ELSE 'table' END";
    vec![
        (
            "columns",
            Reads::Parts(PartKind::Column),
            format!(
                "SELECT {owner_kind}, {relation_name}, format('%I', a.attname),
                        json_build_object(
                            'type', format_type(a.atttypid, a.atttypmod),
                            'not null', CASE WHEN a.attnotnull THEN 'yes' END,
                            'default', CASE WHEN a.attgenerated = '' THEN pg_get_expr(ad.adbin, ad.adrelid) END,
                            'generated', CASE WHEN a.attgenerated = 's'
                                THEN 'always as (' || pg_get_expr(ad.adbin, ad.adrelid) || ') stored' END,
                            'identity', CASE a.attidentity WHEN 'a' THEN 'always'
                                WHEN 'd' THEN 'by default' END,
                            'collation', CASE WHEN a.attcollation <> t.typcollation
                                THEN (SELECT format('%I', co.collname) FROM pg_collation co
                                      WHERE co.oid = a.attcollation) END)::text
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_type t ON t.oid = a.atttypid
                 LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                 WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
                   AND {USER_SCHEMA} AND {class}"
            ),
        ),
        (
            "constraints",
            Reads::Parts(PartKind::Constraint),
            format!(
                "SELECT {owner_kind}, {relation_name}, format('%I', k.conname),
                        json_build_object(
                            'type', CASE k.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique'
                                WHEN 'f' THEN 'foreign key' WHEN 'c' THEN 'check'
                                WHEN 'x' THEN 'exclusion' ELSE k.contype::text END,
                            'definition', pg_get_constraintdef(k.oid, true))::text
                 FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE k.contype IN ('p', 'u', 'f', 'c', 'x') AND {USER_SCHEMA} AND {class}"
            ),
        ),
        (
            "indexes",
            Reads::Parts(PartKind::Index),
            format!(
                "SELECT {owner_kind}, {relation_name}, format('%I', ic.relname),
                        json_build_object('definition', pg_get_indexdef(i.indexrelid))::text
                 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 JOIN pg_class c ON c.oid = i.indrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p', 'm') AND {USER_SCHEMA} AND {class}
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                       AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x'))"
            ),
        ),
        (
            "triggers",
            Reads::Parts(PartKind::Trigger),
            format!(
                "SELECT {owner_kind}, {relation_name}, format('%I', g.tgname),
                        json_build_object('definition', pg_get_triggerdef(g.oid, true),
                            'enabled', CASE g.tgenabled WHEN 'D' THEN 'no' WHEN 'R' THEN 'replica'
                                WHEN 'A' THEN 'always' END)::text
                 FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE NOT g.tgisinternal AND {USER_SCHEMA} AND {class}"
            ),
        ),
        (
            "policies",
            Reads::Parts(PartKind::Policy),
            format!(
                "SELECT {owner_kind}, {relation_name}, format('%I', p.polname),
                        json_build_object(
                            'command', CASE p.polcmd WHEN 'r' THEN 'select' WHEN 'a' THEN 'insert'
                                WHEN 'w' THEN 'update' WHEN 'd' THEN 'delete' ELSE 'all' END,
                            'permissive', CASE WHEN p.polpermissive THEN 'yes' ELSE 'no' END,
                            'roles', (SELECT string_agg(CASE WHEN r = 0 THEN 'public'
                                ELSE format('%I', (SELECT rolname FROM pg_roles WHERE oid = r)) END,
                                ', ' ORDER BY 1) FROM unnest(p.polroles) r),
                            'using', pg_get_expr(p.polqual, p.polrelid),
                            'with check', pg_get_expr(p.polwithcheck, p.polrelid))::text
                 FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE {USER_SCHEMA} AND {class}"
            ),
        ),
    ]
}

fn object_kind(text: &str) -> Option<ObjectKind> {
    Some(match text {
        "schema" => ObjectKind::Schema,
        "extension" => ObjectKind::Extension,
        "enum" => ObjectKind::Enum,
        "domain" => ObjectKind::Domain,
        "sequence" => ObjectKind::Sequence,
        "table" => ObjectKind::Table,
        "view" => ObjectKind::View,
        "materialized_view" => ObjectKind::MaterializedView,
        "function" => ObjectKind::Function,
        "procedure" => ObjectKind::Procedure,
        _ => return None,
    })
}

/// Properties from a JSON object: null values are absent, others as text.
fn properties(json: &str) -> Result<Properties, String> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some((k, s)),
            other => Some((k, other.to_string())),
        })
        .collect())
}

/// Reads the schema of the database `conn` is connected to, in one transaction (a consistent
/// snapshot), one query per kind.
pub async fn read_schema(conn: &mut PgConnection) -> Result<Schema, DbError> {
    let failed = |what: &'static str| {
        move |e: sqlx::Error| DbError::ReadCatalogFailed {
            what,
            source: SqlError(e),
        }
    };
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(failed("the catalogs"))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(failed("the catalogs"))?;
    let mut schema = Schema::default();
    for (what, reads, sql) in queries() {
        let rows: Vec<(String, String, Option<String>, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *tx)
                .await
                .map_err(failed(what))?;
        for (kind, name, part, json) in rows {
            let properties = properties(&json).map_err(|e| {
                failed(what)(sqlx::Error::Protocol(format!("unreadable properties: {e}")))
            })?;
            let kind = object_kind(&kind).ok_or_else(|| {
                failed(what)(sqlx::Error::Protocol(format!(
                    "unknown object kind `{kind}`"
                )))
            })?;
            let object = schema.objects.entry((kind, name)).or_default();
            match (reads, part) {
                (Reads::Parts(part_kind), Some(part)) => {
                    object.parts.insert((part_kind, part), properties);
                }
                (Reads::Objects, _) => object.properties = properties,
                (Reads::Parts(_), None) => {}
            }
        }
    }
    tx.rollback().await.map_err(failed("the catalogs"))?;
    Ok(schema)
}
