//! The AWS provider: Aurora PostgreSQL express clusters, reached with IAM database authentication.
//! For now only `token`, which signs the IAM auth tokens those clusters take as passwords.

pub mod token;
