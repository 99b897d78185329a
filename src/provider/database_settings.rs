//! What a database holds outside its files, carried from a source to its copy: its settings
//! (`ALTER DATABASE … SET`, `ALTER ROLE … IN DATABASE … SET`) and its privileges (`GRANT … ON
//! DATABASE`). PostgreSQL keeps both in shared catalogs (`pg_db_role_setting`,
//! `pg_database.datacl`), so neither a template copy nor a dump without `--create` takes them;
//! an Aurora clone keeps them (the catalogs are the cluster's), and a data branch on the local
//! provider must behave the same: a `search_path` set by a migration, a `REVOKE CONNECT … FROM
//! PUBLIC`, are part of the schema its ledger says was applied.
//!
//! Every name is quoted and every value passed as a literal ([`quote_ident`], [`quote_literal`]);
//! a list setting (`search_path`) is split into its elements first, as `pg_dump` does, so the
//! copy stores the very same text.

use sqlx::{AssertSqlSafe, PgConnection};

use super::BoxError;
use crate::sql::{quote_ident, quote_literal, split_identifiers, without_values};

/// Settings whose stored value is a list of quoted identifiers (`GUC_LIST_QUOTE`), the same list
/// as `pg_dump`'s `variable_is_guc_list_quote`: their elements are passed one literal each.
const LIST_QUOTE: [&str; 6] = [
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// The source's settings: the role they are for (`None`: everyone), and `name=value` each.
const SETTINGS: &str = "SELECT r.rolname::text, s.setconfig::text[]
    FROM pg_db_role_setting s
    JOIN pg_database d ON d.oid = s.setdatabase
    LEFT JOIN pg_roles r ON r.oid = s.setrole
    WHERE d.datname = $1 AND (s.setrole = 0::oid OR r.oid IS NOT NULL)
    ORDER BY r.rolname NULLS FIRST";

/// The source's privileges, when it has any of its own (`datacl` not null): grantee (`None`:
/// PUBLIC), privilege, grantable. Its owner's are its owner's, whoever owns the copy.
const PRIVILEGES: &str = "SELECT d.datacl IS NOT NULL,
        CASE WHEN a.grantee <> 0::oid THEN pg_get_userbyid(a.grantee)::text END,
        a.privilege_type, a.is_grantable
    FROM pg_database d
    LEFT JOIN LATERAL (
        SELECT * FROM aclexplode(d.datacl) x WHERE x.grantee <> d.datdba
    ) a ON true
    WHERE d.datname = $1
    ORDER BY 2 NULLS FIRST, 3";

/// A row of [`PRIVILEGES`]: whether the source has privileges of its own, the grantee (`None`:
/// PUBLIC), the privilege (`None`: no row of the list), whether it may be granted on.
type PrivilegeRow = (bool, Option<String>, Option<String>, Option<bool>);

/// Gives `target` the settings and privileges `source` has of its own, on `conn`, the admin's.
pub async fn carry_over(
    conn: &mut PgConnection,
    source: &str,
    target: &str,
) -> Result<(), BoxError> {
    let read = |e: sqlx::Error| -> BoxError {
        format!(
            "cannot read the settings and privileges of `{source}`: {}",
            without_values(&e)
        )
        .into()
    };
    // The statements' literals are written for it (a server or admin role with it off would
    // read a value's backslash as an escape, and a `\'` as the literal's end).
    sqlx::raw_sql("SET standard_conforming_strings = on")
        .execute(&mut *conn)
        .await
        .map_err(read)?;
    let settings: Vec<(Option<String>, Vec<String>)> = sqlx::query_as(SETTINGS)
        .bind(source)
        .fetch_all(&mut *conn)
        .await
        .map_err(read)?;
    let privileges: Vec<PrivilegeRow> = sqlx::query_as(PRIVILEGES)
        .bind(source)
        .fetch_all(&mut *conn)
        .await
        .map_err(read)?;
    // Each with what a failure names: a setting by its name alone (its value may be a secret,
    // an `app.jwt_secret`), a privilege whole.
    let mut statements: Vec<(String, String, bool)> = Vec::new();
    for (role, config) in &settings {
        for entry in config {
            let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
            let label = match role {
                Some(role) => format!("the setting `{name}` for role `{role}`"),
                None => format!("the setting `{name}`"),
            };
            statements.push((
                label,
                setting_statement(target, role.as_deref(), entry)?,
                true,
            ));
        }
    }
    for statement in privilege_statements(target, &privileges) {
        let label = format!("`{}`", statement.replace(&quote_ident(target), "<copy>"));
        statements.push((label, statement, false));
    }
    for (label, statement, setting) in statements {
        let Err(e) = sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut *conn)
            .await
        else {
            continue;
        };
        let code = match &e {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        // A parameter this server does not know (renamed in a later version, kept by an
        // upgrade): it would do nothing here, as in a clone on this version.
        if setting && code.as_deref() == Some("42704") {
            continue;
        }
        // An invalid value's message quotes the value.
        let why = match code.as_deref() {
            Some("22023") if setting => "its value is not valid here (SQLSTATE 22023)".to_owned(),
            _ => without_values(&e),
        };
        return Err(format!("cannot give the copy the source's own {label}: {why}").into());
    }
    Ok(())
}

/// `ALTER DATABASE target SET …` (or `ALTER ROLE role IN DATABASE target SET …`) for one
/// `name=value` of `pg_db_role_setting.setconfig`.
pub fn setting_statement(
    target: &str,
    role: Option<&str>,
    entry: &str,
) -> Result<String, BoxError> {
    let (name, value) = entry
        .split_once('=')
        .ok_or_else(|| format!("a database setting reads `{entry}`, not `name=value`"))?;
    if name.is_empty() {
        return Err(format!("a database setting reads `{entry}`, with no name").into());
    }
    // `a.b`, a custom setting, is written as two quoted names.
    let name_sql: Vec<String> = name.split('.').map(quote_ident).collect();
    let values = if LIST_QUOTE.iter().any(|l| l.eq_ignore_ascii_case(name)) {
        split_identifiers(value)
            .ok_or_else(|| format!("the database setting `{name}` is not a list of names"))?
            .iter()
            .map(|element| quote_literal(element))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        quote_literal(value)
    };
    let subject = match role {
        None => format!("DATABASE {}", quote_ident(target)),
        Some(role) => format!(
            "ROLE {} IN DATABASE {}",
            quote_ident(role),
            quote_ident(target)
        ),
    };
    Ok(format!(
        "ALTER {subject} SET {} TO {values}",
        name_sql.join(".")
    ))
}

/// The `GRANT`s and `REVOKE` that give `target` the source's own privileges ([`PRIVILEGES`]'s
/// rows). None when the source has the default ones (`datacl` null), as a new database has.
fn privilege_statements(target: &str, rows: &[PrivilegeRow]) -> Vec<String> {
    if !rows.iter().any(|(own, ..)| *own) {
        return Vec::new();
    }
    // A new database gives PUBLIC `CONNECT` and `TEMPORARY`: the source's list replaces them.
    let mut statements = vec![format!(
        "REVOKE ALL ON DATABASE {} FROM PUBLIC",
        quote_ident(target)
    )];
    for (_, grantee, privilege, grantable) in rows {
        let Some(privilege) = privilege else {
            continue;
        };
        // The privilege names come from aclexplode: CREATE, CONNECT, TEMPORARY.
        if !matches!(privilege.as_str(), "CREATE" | "CONNECT" | "TEMPORARY") {
            continue;
        }
        let grantee = grantee.as_deref().map_or("PUBLIC".to_owned(), quote_ident);
        let option = if grantable.unwrap_or(false) {
            " WITH GRANT OPTION"
        } else {
            ""
        };
        statements.push(format!(
            "GRANT {privilege} ON DATABASE {} TO {grantee}{option}",
            quote_ident(target)
        ));
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_settings_are_split_as_postgresql_stores_them() {
        assert_eq!(
            split_identifiers(r#"app, "$user", "We,ird", "a""b""#).unwrap(),
            ["app", "$user", "We,ird", "a\"b"]
        );
        assert_eq!(split_identifiers("").unwrap(), Vec::<String>::new());
        assert_eq!(split_identifiers(r#""""#).unwrap(), [""]);
        for bad in [r#""open"#, "a,,b", "a b", "a,", r#""a"b"#] {
            assert_eq!(split_identifiers(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_are_written_quoted_whatever_they_hold() {
        assert_eq!(
            setting_statement("co\"py", None, r#"search_path=app, "$user", "x'; DROP""#).unwrap(),
            r#"ALTER DATABASE "co""py" SET "search_path" TO 'app', '$user', 'x''; DROP'"#
        );
        assert_eq!(
            setting_statement("copy", Some("we\"ird"), "DateStyle=ISO, DMY").unwrap(),
            r#"ALTER ROLE "we""ird" IN DATABASE "copy" SET "DateStyle" TO 'ISO, DMY'"#
        );
        assert_eq!(
            setting_statement("copy", None, "app.note=it's=fine").unwrap(),
            r#"ALTER DATABASE "copy" SET "app"."note" TO 'it''s=fine'"#
        );
        assert!(setting_statement("copy", None, "no equals sign").is_err());
        assert!(setting_statement("copy", None, "=x").is_err());
        assert!(setting_statement("copy", None, r#"search_path="open"#).is_err());
    }

    #[test]
    fn privileges_replace_the_default_ones_only_when_the_source_has_its_own() {
        let row = |grantee: Option<&str>, privilege: &str, grantable: bool| {
            (
                true,
                grantee.map(str::to_owned),
                Some(privilege.to_owned()),
                Some(grantable),
            )
        };
        assert_eq!(
            privilege_statements("copy", &[(false, None, None, None)]),
            Vec::<String>::new()
        );
        assert_eq!(
            privilege_statements(
                "copy",
                &[
                    row(None, "TEMPORARY", false),
                    row(Some("read\"er"), "CONNECT", true)
                ]
            ),
            [
                r#"REVOKE ALL ON DATABASE "copy" FROM PUBLIC"#,
                r#"GRANT TEMPORARY ON DATABASE "copy" TO PUBLIC"#,
                r#"GRANT CONNECT ON DATABASE "copy" TO "read""er" WITH GRANT OPTION"#,
            ]
        );
        // A source whose list names only its owner: nobody else may connect to the copy either.
        assert_eq!(
            privilege_statements("copy", &[(true, None, None, None)]),
            [r#"REVOKE ALL ON DATABASE "copy" FROM PUBLIC"#]
        );
    }
}
