//! The RealWorld API's handlers. Every one is `#[tenant_scoped]`: it gets a handle
//! bound to the request's tenant (a community), and every query below goes through
//! tenantry's entities, which scope it to that tenant whatever its strategy.

use std::collections::{BTreeSet, HashMap, HashSet};

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::RngExt;
use serde::{Deserialize, Deserializer, Serialize};
use tenantry::extract::{Json, Path, Query};
use tenantry::{CurrentTenant, TenantDb, TenantEntity, TenantHandle, TenantTx};
use tenantry::{Select, tenant_scoped};

use crate::AppState;
use crate::auth::{self, AuthUser};
use crate::error::ApiError;
use crate::model::*;

type ApiResult<T> = Result<T, ApiError>;

// ---------------------------------------------------------------- request bodies

/// `{"user": {...}}`.
#[derive(Debug, Deserialize)]
pub struct UserBody<T> {
    user: T,
}

/// Registration.
#[derive(Debug, Deserialize)]
pub struct Register {
    username: String,
    email: String,
    password: String,
}

/// Login.
#[derive(Debug, Deserialize)]
pub struct Login {
    email: String,
    password: String,
}

/// A change of the current user: absent fields stay, `null` clears `bio` / `image`.
#[derive(Debug, Deserialize)]
pub struct UpdateUser {
    email: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default, deserialize_with = "present")]
    bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    image: Option<Option<String>>,
}

/// A field that is present (`Some`, its value possibly `null`) or absent (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `{"article": {...}}`.
#[derive(Debug, Deserialize)]
pub struct ArticleBody<T> {
    article: T,
}

/// A new article.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateArticle {
    title: String,
    description: String,
    body: String,
    #[serde(default)]
    tag_list: Vec<String>,
}

/// A change of an article: absent fields stay.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateArticle {
    title: Option<String>,
    description: Option<String>,
    body: Option<String>,
    tag_list: Option<Vec<String>>,
}

/// `{"comment": {"body": "..."}}`.
#[derive(Debug, Deserialize)]
pub struct CommentBody {
    comment: NewCommentText,
}

/// A comment's text.
#[derive(Debug, Deserialize)]
pub struct NewCommentText {
    body: String,
}

/// `?tag=&author=&favorited=&limit=&offset=`.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    tag: Option<String>,
    author: Option<String>,
    favorited: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// `{slug}` (named, so the routes also work under `/t/{tenant}/api`).
#[derive(Debug, Deserialize)]
pub struct SlugPath {
    slug: String,
}

/// `{username}`.
#[derive(Debug, Deserialize)]
pub struct UserPath {
    username: String,
}

/// `{slug}/comments/{id}`.
#[derive(Debug, Deserialize)]
pub struct CommentPath {
    slug: String,
    id: i64,
}

// ---------------------------------------------------------------- responses

/// `user` of the user endpoints.
#[derive(Debug, Serialize)]
pub struct UserOut {
    email: String,
    token: String,
    username: String,
    bio: Option<String>,
    image: Option<String>,
}

/// A profile, as the viewer sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileOut {
    username: String,
    bio: Option<String>,
    image: Option<String>,
    following: bool,
}

/// An article, as the viewer sees it (`body` only where one article is answered).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArticleOut {
    slug: String,
    title: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    tag_list: Vec<String>,
    created_at: String,
    updated_at: String,
    favorited: bool,
    favorites_count: i64,
    author: ProfileOut,
}

/// A comment.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentOut {
    id: i64,
    created_at: String,
    updated_at: String,
    body: String,
    author: ProfileOut,
}

/// `{"user": ...}`.
#[derive(Debug, Serialize)]
pub struct UserEnvelope {
    user: UserOut,
}

/// `{"profile": ...}`.
#[derive(Debug, Serialize)]
pub struct ProfileEnvelope {
    profile: ProfileOut,
}

/// `{"article": ...}`.
#[derive(Debug, Serialize)]
pub struct ArticleEnvelope {
    article: ArticleOut,
}

/// `{"articles": [...], "articlesCount": n}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArticlesEnvelope {
    articles: Vec<ArticleOut>,
    articles_count: i64,
}

/// `{"comment": ...}`.
#[derive(Debug, Serialize)]
pub struct CommentEnvelope {
    comment: CommentOut,
}

/// `{"comments": [...]}`.
#[derive(Debug, Serialize)]
pub struct CommentsEnvelope {
    comments: Vec<CommentOut>,
}

/// `{"tags": [...]}`.
#[derive(Debug, Serialize)]
pub struct TagsEnvelope {
    tags: Vec<String>,
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn user_out(user: User, token: String) -> UserOut {
    UserOut {
        email: user.email,
        token,
        username: user.username,
        bio: user.bio,
        image: user.image,
    }
}

// ---------------------------------------------------------------- validation

/// `value`, trimmed; 422 if blank or longer than `max` characters.
fn required(field: &'static str, value: &str, max: usize) -> ApiResult<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid(field, "can't be blank"));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("is too long (at most {max} characters)"),
        ));
    }
    Ok(value.to_owned())
}

/// An email, trimmed and lowercased (one account per address, whatever its case).
fn email(value: &str) -> ApiResult<String> {
    let value = required("email", value, 254)?.to_lowercase();
    let plain = !value.chars().any(|c| c.is_whitespace() || c.is_control());
    match value.split_once('@') {
        Some((local, domain)) if plain && !local.is_empty() && domain.contains('.') => Ok(value),
        _ => Err(ApiError::invalid("email", "is invalid")),
    }
}

/// A username: 1 to 64 ASCII letters, digits, `_`, `-` or `.`, starting with a letter
/// or digit (no look-alike characters, no path tricks like `..` or `a/b`).
fn username(value: &str) -> ApiResult<String> {
    let value = required("username", value, 64)?;
    let ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(ApiError::invalid(
            "username",
            "may hold only letters, digits, `_`, `-` and `.`, and starts with a letter or digit",
        ));
    }
    Ok(value)
}

/// A member other than `me` with this username, whatever its case.
async fn username_taken<H: TenantHandle>(
    h: &mut H,
    name: &str,
    me: Option<i64>,
) -> ApiResult<bool> {
    // `_` is a wildcard of ILIKE: escaped, so the pattern matches `name` only.
    let pattern = name.replace('_', "\\_");
    let mut select = User::select().filter_by(User::USERNAME.ilike(pattern));
    if let Some(me) = me {
        select = select.filter_by(User::ID.ne(me));
    }
    Ok(select.exists(h).await?)
}

/// A bio: at most 2,000 characters.
fn bio(value: Option<String>) -> ApiResult<Option<String>> {
    match value {
        Some(text) if text.chars().count() > 2_000 => Err(ApiError::invalid(
            "bio",
            "is too long (at most 2000 characters)",
        )),
        other => Ok(other),
    }
}

/// An image: an `http`/`https` URL of at most 2,000 characters; empty clears it.
fn image(value: Option<String>) -> ApiResult<Option<String>> {
    match value.map(|v| v.trim().to_owned()) {
        None => Ok(None),
        Some(url) if url.is_empty() => Ok(None),
        Some(url) => {
            let lower = url.to_ascii_lowercase();
            let web = lower.starts_with("https://") || lower.starts_with("http://");
            if !web || url.len() > 2_000 || url.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ApiError::invalid(
                    "image",
                    "must be an http(s) URL of at most 2000 characters",
                ));
            }
            Ok(Some(url))
        }
    }
}

/// At most 64 characters of a request's value, for a message.
fn shown(value: &str) -> String {
    let mut short: String = value.chars().take(64).collect();
    if short.len() < value.len() {
        short.push_str("...");
    }
    short.escape_debug().to_string()
}

fn password(value: &str) -> ApiResult<String> {
    if value.is_empty() {
        return Err(ApiError::invalid("password", "can't be blank"));
    }
    if value.len() > 1024 {
        return Err(ApiError::invalid("password", "is too long"));
    }
    Ok(value.to_owned())
}

/// The tags of a request, trimmed, without blanks and duplicates, sorted.
fn tags(list: &[String]) -> ApiResult<Vec<String>> {
    if list.len() > 32 {
        return Err(ApiError::invalid("tagList", "has more than 32 tags"));
    }
    let mut set = BTreeSet::new();
    for tag in list {
        let tag = tag.trim();
        if tag.chars().count() > 64 {
            return Err(ApiError::invalid("tagList", "has a tag over 64 characters"));
        }
        if !tag.is_empty() {
            set.insert(tag.to_owned());
        }
    }
    Ok(set.into_iter().collect())
}

/// An address for `title`: its words in lowercase, and a random suffix so that two
/// articles of the same title get two addresses.
fn slug_of(title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 80 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    let suffix: u32 = rand::rng().random();
    if slug.is_empty() {
        format!("article-{suffix:08x}")
    } else {
        format!("{slug}-{suffix:08x}")
    }
}

// ---------------------------------------------------------------- loading

async fn user_named<H: TenantHandle>(h: &mut H, username: &str) -> ApiResult<Option<User>> {
    Ok(User::select()
        .filter_by(User::USERNAME.eq(username))
        .fetch_optional(h)
        .await?)
}

/// The member called `username`: 404 if there is none.
async fn member<H: TenantHandle>(h: &mut H, username: &str) -> ApiResult<User> {
    user_named(h, username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user `{}`", shown(username))))
}

async fn article_at<H: TenantHandle>(h: &mut H, slug: &str) -> ApiResult<Article> {
    Article::select()
        .filter_by(Article::SLUG.eq(slug))
        .fetch_optional(h)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no article `{}`", shown(slug))))
}

/// The profiles of `ids` as `viewer` sees them.
async fn profiles<H: TenantHandle>(
    h: &mut H,
    viewer: Option<i64>,
    ids: Vec<i64>,
) -> ApiResult<HashMap<i64, ProfileOut>> {
    let ids: Vec<i64> = ids
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let users = User::select()
        .filter_by(User::ID.any(ids.clone()))
        .fetch_all(h)
        .await?;
    let followed: HashSet<i64> = match viewer {
        Some(viewer) => Follow::select()
            .filter_by(Follow::FOLLOWER_ID.eq(viewer))
            .filter_by(Follow::FOLLOWEE_ID.any(ids))
            .fetch_all(h)
            .await?
            .into_iter()
            .map(|f| f.followee_id)
            .collect(),
        None => HashSet::new(),
    };
    Ok(users
        .into_iter()
        .map(|u| {
            let profile = ProfileOut {
                following: followed.contains(&u.id),
                username: u.username,
                bio: u.bio,
                image: u.image,
            };
            (u.id, profile)
        })
        .collect())
}

/// `articles` as `viewer` sees them: tags, favorites and authors of all of them in
/// one query each (no query per article).
async fn render<H: TenantHandle>(
    h: &mut H,
    viewer: Option<i64>,
    articles: Vec<Article>,
    with_body: bool,
) -> ApiResult<Vec<ArticleOut>> {
    let ids: Vec<i64> = articles.iter().map(|a| a.id).collect();
    let mut tags: HashMap<i64, Vec<String>> = HashMap::new();
    for t in ArticleTag::select()
        .filter_by(ArticleTag::ARTICLE_ID.any(ids.clone()))
        .fetch_all(h)
        .await?
    {
        tags.entry(t.article_id).or_default().push(t.tag);
    }
    let counts: HashMap<i64, i64> = Favorite::select()
        .filter_by(Favorite::ARTICLE_ID.any(ids.clone()))
        .count_by(Favorite::ARTICLE_ID, h)
        .await?
        .into_iter()
        .collect();
    let mine: HashSet<i64> = match viewer {
        Some(viewer) => Favorite::select()
            .filter_by(Favorite::USER_ID.eq(viewer))
            .filter_by(Favorite::ARTICLE_ID.any(ids))
            .fetch_all(h)
            .await?
            .into_iter()
            .map(|f| f.article_id)
            .collect(),
        None => HashSet::new(),
    };
    let authors = profiles(h, viewer, articles.iter().map(|a| a.author_id).collect()).await?;
    articles
        .into_iter()
        .map(|a| {
            let mut tag_list = tags.remove(&a.id).unwrap_or_default();
            tag_list.sort();
            let author = authors
                .get(&a.author_id)
                .cloned()
                .ok_or_else(|| tenantry::Error::Internal("an article without author".into()))?;
            Ok(ArticleOut {
                favorited: mine.contains(&a.id),
                favorites_count: counts.get(&a.id).copied().unwrap_or(0),
                slug: a.slug,
                title: a.title,
                description: a.description,
                body: with_body.then_some(a.body),
                tag_list,
                created_at: timestamp(a.created_at),
                updated_at: timestamp(a.updated_at),
                author,
            })
        })
        .collect()
}

async fn one<H: TenantHandle>(
    h: &mut H,
    viewer: Option<i64>,
    article: Article,
) -> ApiResult<Json<ArticleEnvelope>> {
    let mut out = render(h, viewer, vec![article], true).await?;
    let article = out
        .pop()
        .ok_or_else(|| tenantry::Error::Internal("rendering lost the article".into()))?;
    Ok(Json(ArticleEnvelope { article }))
}

/// The conditions of a list of articles, resolved to ids: `None` when a filter
/// names nothing (no such author, tag or favoriter), so the list is empty.
struct Filter {
    authors: Option<Vec<i64>>,
    ids: Option<Vec<i64>>,
}

impl Filter {
    fn select(&self) -> Select<Article> {
        let mut select = Article::select();
        if let Some(authors) = &self.authors {
            select = select.filter_by(Article::AUTHOR_ID.any(authors.clone()));
        }
        if let Some(ids) = &self.ids {
            select = select.filter_by(Article::ID.any(ids.clone()));
        }
        select
    }
}

fn window(q: &ListQuery) -> ApiResult<(i64, i64)> {
    let limit = q.limit.unwrap_or(20);
    let offset = q.offset.unwrap_or(0);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 100"));
    }
    if offset < 0 {
        return Err(ApiError::invalid("offset", "must not be negative"));
    }
    Ok((limit, offset))
}

async fn list<H: TenantHandle>(
    h: &mut H,
    viewer: Option<i64>,
    filter: Option<Filter>,
    (limit, offset): (i64, i64),
) -> ApiResult<Json<ArticlesEnvelope>> {
    let Some(filter) = filter else {
        return Ok(Json(ArticlesEnvelope {
            articles: Vec::new(),
            articles_count: 0,
        }));
    };
    let articles_count = filter.select().count(h).await?;
    let page = filter
        .select()
        .sort_by(Article::CREATED_AT.desc())
        .limit(limit)
        .offset(offset)
        .fetch_all(h)
        .await?;
    let articles = render(h, viewer, page, false).await?;
    Ok(Json(ArticlesEnvelope {
        articles,
        articles_count,
    }))
}

// ---------------------------------------------------------------- users

/// `POST /users`: registers a member of this community (201).
#[tenant_scoped(transaction)]
pub async fn register(
    mut tx: TenantTx,
    State(state): State<AppState>,
    CurrentTenant(tenant): CurrentTenant,
    Json(UserBody { user }): Json<UserBody<Register>>,
) -> ApiResult<(StatusCode, Json<UserEnvelope>)> {
    let username = username(&user.username)?;
    let email = email(&user.email)?;
    let password = password(&user.password)?;
    if username_taken(&mut tx, &username, None).await? {
        return Err(ApiError::invalid("username", "has already been taken"));
    }
    let by_email = User::select().filter_by(User::EMAIL.eq(email.as_str()));
    if by_email.exists(&mut tx).await? {
        return Err(ApiError::invalid("email", "has already been taken"));
    }
    let password_hash = auth::hash_password(password).await?;
    let stored = NewUser {
        email,
        username,
        password_hash,
        bio: None,
        image: None,
    }
    .insert(&mut tx)
    .await?;
    let token = state.tokens.issue(&tenant, stored.id)?;
    let user = user_out(stored, token);
    Ok((StatusCode::CREATED, Json(UserEnvelope { user })))
}

/// `POST /users/login`.
#[tenant_scoped]
pub async fn login(
    mut db: TenantDb,
    State(state): State<AppState>,
    CurrentTenant(tenant): CurrentTenant,
    Json(UserBody { user }): Json<UserBody<Login>>,
) -> ApiResult<Json<UserEnvelope>> {
    let refused = || ApiError::Unauthorized("email or password is invalid".to_owned());
    let found = User::select()
        .filter_by(User::EMAIL.eq(user.email.trim().to_lowercase()))
        .fetch_optional(&mut db)
        .await?;
    // Release the connection before the deliberately slow hash check.
    drop(db);
    let Some(found) = found else {
        auth::verify_nothing(user.password).await?;
        return Err(refused());
    };
    if !auth::verify_password(user.password, found.password_hash.clone()).await? {
        return Err(refused());
    }
    let token = state.tokens.issue(&tenant, found.id)?;
    Ok(Json(UserEnvelope {
        user: user_out(found, token),
    }))
}

/// `GET /user`.
#[tenant_scoped]
pub async fn current_user(mut db: TenantDb, me: AuthUser) -> ApiResult<Json<UserEnvelope>> {
    let user = User::find(&mut db, &me.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the token's user is gone".to_owned()))?;
    Ok(Json(UserEnvelope {
        user: user_out(user, me.token),
    }))
}

/// `PUT /user`.
#[tenant_scoped(transaction)]
pub async fn update_user(
    mut tx: TenantTx,
    me: AuthUser,
    Json(UserBody { user }): Json<UserBody<UpdateUser>>,
) -> ApiResult<Json<UserEnvelope>> {
    let mut changes = Vec::new();
    if let Some(name) = &user.username {
        let name = username(name)?;
        if username_taken(&mut tx, &name, Some(me.id)).await? {
            return Err(ApiError::invalid("username", "has already been taken"));
        }
        changes.push(User::USERNAME.set(name));
    }
    if let Some(address) = &user.email {
        let address = email(address)?;
        let other = User::select()
            .filter_by(User::EMAIL.eq(address.as_str()))
            .filter_by(User::ID.ne(me.id))
            .exists(&mut tx)
            .await?;
        if other {
            return Err(ApiError::invalid("email", "has already been taken"));
        }
        changes.push(User::EMAIL.set(address));
    }
    if let Some(new_password) = &user.password {
        let hash = auth::hash_password(password(new_password)?).await?;
        changes.push(User::PASSWORD_HASH.set(hash));
    }
    if let Some(text) = user.bio {
        changes.push(User::BIO.set(bio(text)?));
    }
    if let Some(url) = user.image {
        changes.push(User::IMAGE.set(image(url)?));
    }
    let stored = User::update_columns(&mut tx, &me.id, changes)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the token's user is gone".to_owned()))?;
    Ok(Json(UserEnvelope {
        user: user_out(stored, me.token),
    }))
}

// ---------------------------------------------------------------- profiles

async fn profile_of<H: TenantHandle>(
    h: &mut H,
    viewer: Option<i64>,
    username: &str,
) -> ApiResult<Json<ProfileEnvelope>> {
    let user = member(h, username).await?;
    let mut all = profiles(h, viewer, vec![user.id]).await?;
    let profile = all
        .remove(&user.id)
        .ok_or_else(|| tenantry::Error::Internal("the profile vanished".into()))?;
    Ok(Json(ProfileEnvelope { profile }))
}

/// `GET /profiles/{username}`.
#[tenant_scoped]
pub async fn get_profile(
    mut db: TenantDb,
    viewer: Option<AuthUser>,
    Path(UserPath { username }): Path<UserPath>,
) -> ApiResult<Json<ProfileEnvelope>> {
    profile_of(&mut db, viewer.map(|v| v.id), &username).await
}

/// `POST /profiles/{username}/follow`.
#[tenant_scoped(transaction)]
pub async fn follow(
    mut tx: TenantTx,
    me: AuthUser,
    Path(UserPath { username }): Path<UserPath>,
) -> ApiResult<Json<ProfileEnvelope>> {
    let user = member(&mut tx, &username).await?;
    if user.id == me.id {
        return Err(ApiError::invalid(
            "username",
            "is you: you cannot follow yourself",
        ));
    }
    NewFollow {
        follower_id: me.id,
        followee_id: user.id,
    }
    .insert_or_ignore(&mut tx)
    .await?;
    profile_of(&mut tx, Some(me.id), &username).await
}

/// `DELETE /profiles/{username}/follow`.
#[tenant_scoped(transaction)]
pub async fn unfollow(
    mut tx: TenantTx,
    me: AuthUser,
    Path(UserPath { username }): Path<UserPath>,
) -> ApiResult<Json<ProfileEnvelope>> {
    let user = member(&mut tx, &username).await?;
    Follow::select()
        .filter_by(Follow::FOLLOWER_ID.eq(me.id))
        .filter_by(Follow::FOLLOWEE_ID.eq(user.id))
        .delete(&mut tx)
        .await?;
    profile_of(&mut tx, Some(me.id), &username).await
}

// ---------------------------------------------------------------- articles

/// `GET /articles?tag=&author=&favorited=&limit=&offset=`: newest first.
#[tenant_scoped]
pub async fn list_articles(
    mut db: TenantDb,
    viewer: Option<AuthUser>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<ArticlesEnvelope>> {
    let window = window(&q)?;
    let mut filter = Filter {
        authors: None,
        ids: None,
    };
    let mut nothing = false;
    if let Some(author) = &q.author {
        match user_named(&mut db, author).await? {
            Some(user) => filter.authors = Some(vec![user.id]),
            None => nothing = true,
        }
    }
    let narrow = |ids: Vec<i64>, filter: &mut Filter| {
        filter.ids = Some(match filter.ids.take() {
            None => ids,
            Some(before) => before.into_iter().filter(|id| ids.contains(id)).collect(),
        });
    };
    if let Some(tag) = &q.tag {
        let ids = ArticleTag::select()
            .filter_by(ArticleTag::TAG.eq(tag.as_str()))
            .fetch_all(&mut db)
            .await?
            .into_iter()
            .map(|t| t.article_id)
            .collect();
        narrow(ids, &mut filter);
    }
    if let Some(favoriter) = &q.favorited {
        match user_named(&mut db, favoriter).await? {
            Some(user) => {
                let ids = Favorite::select()
                    .filter_by(Favorite::USER_ID.eq(user.id))
                    .fetch_all(&mut db)
                    .await?
                    .into_iter()
                    .map(|f| f.article_id)
                    .collect();
                narrow(ids, &mut filter);
            }
            None => nothing = true,
        }
    }
    let filter = (!nothing).then_some(filter);
    list(&mut db, viewer.map(|v| v.id), filter, window).await
}

/// `GET /articles/feed`: the articles of the authors the user follows.
#[tenant_scoped]
pub async fn feed(
    mut db: TenantDb,
    me: AuthUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<ArticlesEnvelope>> {
    let window = window(&q)?;
    let followed: Vec<i64> = Follow::select()
        .filter_by(Follow::FOLLOWER_ID.eq(me.id))
        .fetch_all(&mut db)
        .await?
        .into_iter()
        .map(|f| f.followee_id)
        .collect();
    let filter = Filter {
        authors: Some(followed),
        ids: None,
    };
    list(&mut db, Some(me.id), Some(filter), window).await
}

/// `GET /articles/{slug}`.
#[tenant_scoped]
pub async fn get_article(
    mut db: TenantDb,
    viewer: Option<AuthUser>,
    Path(SlugPath { slug }): Path<SlugPath>,
) -> ApiResult<Json<ArticleEnvelope>> {
    let article = article_at(&mut db, &slug).await?;
    one(&mut db, viewer.map(|v| v.id), article).await
}

async fn set_tags(tx: &mut TenantTx, article: i64, tags: &[String]) -> ApiResult<()> {
    for tag in tags {
        NewArticleTag {
            article_id: article,
            tag: tag.clone(),
        }
        .insert_or_ignore(tx)
        .await?;
    }
    Ok(())
}

/// `POST /articles` (201).
#[tenant_scoped(transaction)]
pub async fn create_article(
    mut tx: TenantTx,
    me: AuthUser,
    Json(ArticleBody { article }): Json<ArticleBody<CreateArticle>>,
) -> ApiResult<(StatusCode, Json<ArticleEnvelope>)> {
    let title = required("title", &article.title, 300)?;
    let description = required("description", &article.description, 2_000)?;
    let body = required("body", &article.body, 100_000)?;
    let tags = tags(&article.tag_list)?;
    let now = Utc::now();
    let stored = NewArticle {
        slug: slug_of(&title),
        title,
        description,
        body,
        author_id: me.id,
        created_at: now,
        updated_at: now,
    }
    .insert(&mut tx)
    .await?;
    set_tags(&mut tx, stored.id, &tags).await?;
    Ok((
        StatusCode::CREATED,
        one(&mut tx, Some(me.id), stored).await?,
    ))
}

/// The article at `slug`, if `me` wrote it: 404 / 403 otherwise.
async fn own_article(tx: &mut TenantTx, me: &AuthUser, slug: &str) -> ApiResult<Article> {
    let article = article_at(tx, slug).await?;
    if article.author_id != me.id {
        return Err(ApiError::Forbidden(
            "only the author may change or delete an article".to_owned(),
        ));
    }
    Ok(article)
}

/// `PUT /articles/{slug}`: a new title gives a new slug.
#[tenant_scoped(transaction)]
pub async fn update_article(
    mut tx: TenantTx,
    me: AuthUser,
    Path(SlugPath { slug }): Path<SlugPath>,
    Json(ArticleBody { article: change }): Json<ArticleBody<UpdateArticle>>,
) -> ApiResult<Json<ArticleEnvelope>> {
    let article = own_article(&mut tx, &me, &slug).await?;
    let mut changes = vec![Article::UPDATED_AT.set(Utc::now())];
    if let Some(title) = &change.title {
        let title = required("title", title, 300)?;
        if title != article.title {
            changes.push(Article::SLUG.set(slug_of(&title)));
        }
        changes.push(Article::TITLE.set(title));
    }
    if let Some(description) = &change.description {
        changes.push(Article::DESCRIPTION.set(required("description", description, 2_000)?));
    }
    if let Some(body) = &change.body {
        changes.push(Article::BODY.set(required("body", body, 100_000)?));
    }
    if let Some(list) = &change.tag_list {
        let tags = tags(list)?;
        ArticleTag::select()
            .filter_by(ArticleTag::ARTICLE_ID.eq(article.id))
            .delete(&mut tx)
            .await?;
        set_tags(&mut tx, article.id, &tags).await?;
    }
    let stored = Article::update_columns(&mut tx, &article.id, changes)
        .await?
        .ok_or_else(|| ApiError::NotFound("the article was deleted meanwhile".to_owned()))?;
    one(&mut tx, Some(me.id), stored).await
}

/// `DELETE /articles/{slug}` (204): its tags, favorites and comments go with it.
#[tenant_scoped(transaction)]
pub async fn delete_article(
    mut tx: TenantTx,
    me: AuthUser,
    Path(SlugPath { slug }): Path<SlugPath>,
) -> ApiResult<StatusCode> {
    let article = own_article(&mut tx, &me, &slug).await?;
    Article::delete(&mut tx, &article.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /articles/{slug}/favorite`.
#[tenant_scoped(transaction)]
pub async fn favorite(
    mut tx: TenantTx,
    me: AuthUser,
    Path(SlugPath { slug }): Path<SlugPath>,
) -> ApiResult<Json<ArticleEnvelope>> {
    let article = article_at(&mut tx, &slug).await?;
    NewFavorite {
        user_id: me.id,
        article_id: article.id,
    }
    .insert_or_ignore(&mut tx)
    .await?;
    one(&mut tx, Some(me.id), article).await
}

/// `DELETE /articles/{slug}/favorite`.
#[tenant_scoped(transaction)]
pub async fn unfavorite(
    mut tx: TenantTx,
    me: AuthUser,
    Path(SlugPath { slug }): Path<SlugPath>,
) -> ApiResult<Json<ArticleEnvelope>> {
    let article = article_at(&mut tx, &slug).await?;
    Favorite::select()
        .filter_by(Favorite::USER_ID.eq(me.id))
        .filter_by(Favorite::ARTICLE_ID.eq(article.id))
        .delete(&mut tx)
        .await?;
    one(&mut tx, Some(me.id), article).await
}

// ---------------------------------------------------------------- comments

async fn comments_out<H: TenantHandle>(
    h: &mut H,
    viewer: Option<i64>,
    comments: Vec<Comment>,
) -> ApiResult<Vec<CommentOut>> {
    let authors = profiles(h, viewer, comments.iter().map(|c| c.author_id).collect()).await?;
    comments
        .into_iter()
        .map(|c| {
            let author = authors
                .get(&c.author_id)
                .cloned()
                .ok_or_else(|| tenantry::Error::Internal("a comment without author".into()))?;
            Ok(CommentOut {
                id: c.id,
                created_at: timestamp(c.created_at),
                updated_at: timestamp(c.updated_at),
                body: c.body,
                author,
            })
        })
        .collect()
}

/// `GET /articles/{slug}/comments`: oldest first.
#[tenant_scoped]
pub async fn list_comments(
    mut db: TenantDb,
    viewer: Option<AuthUser>,
    Path(SlugPath { slug }): Path<SlugPath>,
) -> ApiResult<Json<CommentsEnvelope>> {
    let article = article_at(&mut db, &slug).await?;
    let comments = Comment::select()
        .filter_by(Comment::ARTICLE_ID.eq(article.id))
        .sort_by(Comment::ID.asc())
        .limit(500)
        .fetch_all(&mut db)
        .await?;
    let comments = comments_out(&mut db, viewer.map(|v| v.id), comments).await?;
    Ok(Json(CommentsEnvelope { comments }))
}

/// `POST /articles/{slug}/comments`.
#[tenant_scoped(transaction)]
pub async fn add_comment(
    mut tx: TenantTx,
    me: AuthUser,
    Path(SlugPath { slug }): Path<SlugPath>,
    Json(CommentBody { comment }): Json<CommentBody>,
) -> ApiResult<Json<CommentEnvelope>> {
    let article = article_at(&mut tx, &slug).await?;
    let body = required("body", &comment.body, 20_000)?;
    let now = Utc::now();
    let stored = NewComment {
        article_id: article.id,
        author_id: me.id,
        body,
        created_at: now,
        updated_at: now,
    }
    .insert(&mut tx)
    .await?;
    let mut out = comments_out(&mut tx, Some(me.id), vec![stored]).await?;
    let comment = out
        .pop()
        .ok_or_else(|| tenantry::Error::Internal("rendering lost the comment".into()))?;
    Ok(Json(CommentEnvelope { comment }))
}

/// `DELETE /articles/{slug}/comments/{id}` (204): its author only.
#[tenant_scoped(transaction)]
pub async fn delete_comment(
    mut tx: TenantTx,
    me: AuthUser,
    Path(CommentPath { slug, id }): Path<CommentPath>,
) -> ApiResult<StatusCode> {
    let article = article_at(&mut tx, &slug).await?;
    let comment = Comment::find(&mut tx, &id)
        .await?
        .filter(|c| c.article_id == article.id)
        .ok_or_else(|| ApiError::NotFound(format!("no comment {id} on this article")))?;
    if comment.author_id != me.id {
        return Err(ApiError::Forbidden(
            "only its author may delete a comment".to_owned(),
        ));
    }
    Comment::delete(&mut tx, &comment.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- tags

/// `GET /tags`: the community's tags, most used first.
#[tenant_scoped]
pub async fn list_tags(mut db: TenantDb) -> ApiResult<Json<TagsEnvelope>> {
    let mut counted = ArticleTag::select()
        .count_by(ArticleTag::TAG, &mut db)
        .await?;
    counted.sort_by(|(a, n), (b, m)| m.cmp(n).then_with(|| a.cmp(b)));
    let tags = counted.into_iter().take(100).map(|(tag, _)| tag).collect();
    Ok(Json(TagsEnvelope { tags }))
}
