//! The tables of a Conduit community, as tenantry entities. Each serves schema,
//! database and row tenants alike (`row_tenant_column`): row tenants' statements
//! carry `tenant_id = $n` on the shared tables, the others' name the tenant's own.

use chrono::{DateTime, Utc};
use tenantry::TenantEntity;

/// A member of the community.
#[derive(Debug, Clone, TenantEntity)]
#[tenant(table = "users", new, row_tenant_column)]
pub struct User {
    /// Its id in this community.
    #[tenant(id, generated)]
    pub id: i64,
    /// Its email (unique in the community).
    pub email: String,
    /// Its name (unique in the community).
    pub username: String,
    /// Argon2id, as a PHC string.
    pub password_hash: String,
    /// Free text.
    pub bio: Option<String>,
    /// An image URL.
    pub image: Option<String>,
}

/// `follower` follows `followee`.
#[derive(Debug, Clone, TenantEntity)]
#[tenant(table = "follows", new, row_tenant_column)]
pub struct Follow {
    /// Its id.
    #[tenant(id, generated)]
    pub id: i64,
    /// Who follows.
    pub follower_id: i64,
    /// Whom.
    pub followee_id: i64,
}

/// An article.
#[derive(Debug, Clone, TenantEntity)]
#[tenant(table = "articles", new, row_tenant_column)]
pub struct Article {
    /// Its id.
    #[tenant(id, generated)]
    pub id: i64,
    /// Its address (unique in the community).
    pub slug: String,
    /// Its title.
    pub title: String,
    /// Its summary.
    pub description: String,
    /// Its text.
    pub body: String,
    /// Who wrote it.
    pub author_id: i64,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A tag of an article (many-to-many between articles and tag names).
#[derive(Debug, Clone, TenantEntity)]
#[tenant(table = "article_tags", new, row_tenant_column)]
pub struct ArticleTag {
    /// Its id.
    #[tenant(id, generated)]
    pub id: i64,
    /// The article.
    pub article_id: i64,
    /// The tag.
    pub tag: String,
}

/// `user` favorited `article`.
#[derive(Debug, Clone, TenantEntity)]
#[tenant(table = "favorites", new, row_tenant_column)]
pub struct Favorite {
    /// Its id.
    #[tenant(id, generated)]
    pub id: i64,
    /// Who.
    pub user_id: i64,
    /// Which article.
    pub article_id: i64,
}

/// A comment on an article.
#[derive(Debug, Clone, TenantEntity)]
#[tenant(table = "comments", new, row_tenant_column)]
pub struct Comment {
    /// Its id.
    #[tenant(id, generated)]
    pub id: i64,
    /// The article.
    pub article_id: i64,
    /// Who wrote it.
    pub author_id: i64,
    /// Its text.
    pub body: String,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}
