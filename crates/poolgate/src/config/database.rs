//! Where the database lives: `database_url` (`--database-url`, `POOLGATE_DATABASE_URL`), by
//! default `sqlite://<data_dir>/poolgate.db`. The scheme picks the store implementation; a
//! PostgreSQL URL is accepted here and refused by the store until it has an implementation.

use std::fmt;
use std::path::PathBuf;

use crate::domain::Invalid;

/// A parsed `database_url`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://PATH` (or `sqlite:PATH`): an SQLite file, created if missing.
    Sqlite(PathBuf),
    /// `postgres://…` / `postgresql://…`, kept whole (it may hold a password: never printed).
    Postgres(String),
}

impl DatabaseUrl {
    /// Parses a URL; `field` names it in the error.
    pub fn parse(field: &str, text: &str) -> Result<DatabaseUrl, Invalid> {
        let text = text.trim();
        if let Some(path) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(Invalid::new(field, "`sqlite://` needs a file path"));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(text.to_owned()));
        }
        Err(Invalid::new(
            field,
            "must be a `sqlite://PATH` URL (or `postgres://…`)",
        ))
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match self {
            DatabaseUrl::Sqlite(path) => Some(path),
            DatabaseUrl::Postgres(_) => None,
        }
    }
}

/// Shows the URL without credentials.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => {
                let host = url
                    .split_once("://")
                    .map(|(_, rest)| rest.rsplit_once('@').map_or(rest, |(_, host)| host))
                    .unwrap_or_default();
                write!(f, "postgres://{host}")
            }
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_a_file() {
        let parse = |text| DatabaseUrl::parse("database_url", text).unwrap();
        assert_eq!(
            parse("sqlite:///var/lib/poolgate/poolgate.db"),
            DatabaseUrl::Sqlite(PathBuf::from("/var/lib/poolgate/poolgate.db"))
        );
        assert_eq!(
            parse("sqlite://data/pg.db"),
            DatabaseUrl::Sqlite(PathBuf::from("data/pg.db"))
        );
        assert_eq!(
            parse("sqlite:pg.db").sqlite_path(),
            Some(std::path::Path::new("pg.db"))
        );
    }

    #[test]
    fn other_schemes_are_refused_and_passwords_never_shown() {
        for bad in ["mysql://x", "/tmp/pg.db", "sqlite://", ""] {
            let error = DatabaseUrl::parse("database_url", bad).unwrap_err();
            assert_eq!(error.field, "database_url", "{bad}");
        }
        let url = DatabaseUrl::parse("database_url", "postgres://pg:s3cret@db:5432/pg").unwrap();
        assert_eq!(url.to_string(), "postgres://db:5432/pg");
        assert!(!format!("{url:?}").contains("s3cret"));
    }
}
