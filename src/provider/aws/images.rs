//! AMIs as records: finding a source (newest match), finding what a key built and listing
//! every version imgraph tagged (recovery without state), and the tags a version carries
//! (imgraph's own, which the user's cannot override, and the user's).

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, Image as AmiImage, ImageState, Tag};

use super::{
    api_error, AwsError, AwsProvider, TAG_DELIVERED_PREFIX, TAG_IMAGE, TAG_KEY, TAG_STATUS,
    TAG_VERSION,
};
use crate::config::model::Image;
use crate::provider::{ProviderError, RecordedVersion};
use crate::state::ReleaseStatus;

impl From<TaggedImage> for RecordedVersion {
    fn from(t: TaggedImage) -> Self {
        RecordedVersion {
            status: t
                .status
                .as_deref()
                .and_then(ReleaseStatus::parse)
                .unwrap_or(ReleaseStatus::Candidate),
            built_at_ms: t
                .created_at
                .as_deref()
                .and_then(|c| humantime::parse_rfc3339_weak(c).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_millis()).ok()),
            image: t.image,
            version: t.version,
            artifact_id: t.ami_id,
            key: t.key,
            environments: t.delivered,
            tags: Some(t.user_tags),
        }
    }
}

/// An AMI imgraph built, as its tags describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedImage {
    pub ami_id: String,
    pub image: String,
    pub version: String,
    pub key: String,
    /// `Release_Status`: `Candidate`, `Ready` or `Failed`.
    pub status: Option<String>,
    /// EC2's `CreationDate` (ISO 8601).
    pub created_at: Option<String>,
    /// Environments this AMI was delivered to (`imgraph:delivered:ENV` tags), sorted.
    pub delivered: Vec<String>,
    /// The image's own tags (`tags { … }`): every tag but imgraph's and its default
    /// `Name`.
    pub user_tags: BTreeMap<String, String>,
}

impl AwsProvider {
    /// DescribeImages with owners, a name pattern (filter `name`) and tag filters
    /// (`tag:K`=V), state `available`; the newest by creation date.
    pub async fn resolve_source(
        &self,
        owners: &[String],
        name: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<String, ProviderError> {
        let mut filters = vec![filter("state", ["available"])];
        if let Some(n) = name {
            filters.push(filter("name", [n]));
        }
        for (k, v) in tags {
            filters.push(filter(&format!("tag:{k}"), [v.as_str()]));
        }
        let query = describe_query(owners, name, tags);
        let images = self.describe_images(owners, filters, &query).await?;
        let newest = images
            .iter()
            .filter(|i| i.state() == Some(&ImageState::Available))
            .max_by(|a, b| newest_order(a, b));
        match newest.and_then(|i| i.image_id()) {
            Some(id) => Ok(id.to_string()),
            None => Err(AwsError::NoSourceMatch { query }.into()),
        }
    }

    /// The newest available self-owned image tagged `imgraph:image=IMAGE` and
    /// `imgraph:key=KEY`: what a build with this key made, for recovery without state.
    pub async fn find_by_key(
        &self,
        image: &str,
        key: &str,
    ) -> Result<Option<TaggedImage>, ProviderError> {
        let filters = vec![
            filter("state", ["available"]),
            filter(&format!("tag:{TAG_IMAGE}"), [image]),
            filter(&format!("tag:{TAG_KEY}"), [key]),
        ];
        let resource = format!("self-owned images tagged {TAG_IMAGE}={image}, {TAG_KEY}={key}");
        let images = self
            .describe_images(&["self".to_string()], filters, &resource)
            .await?;
        Ok(images
            .iter()
            .filter(|i| i.state() == Some(&ImageState::Available))
            .max_by(|a, b| newest_order(a, b))
            .and_then(tagged_image))
    }

    /// Every available self-owned image with an `imgraph:image` tag (for
    /// `imgraph state recover`), sorted by image, creation date and id.
    pub async fn list_tagged_images(&self) -> Result<Vec<TaggedImage>, ProviderError> {
        let filters = vec![
            filter("state", ["available"]),
            filter("tag-key", [TAG_IMAGE]),
        ];
        let resource = format!("self-owned images tagged {TAG_IMAGE}");
        let images = self
            .describe_images(&["self".to_string()], filters, &resource)
            .await?;
        let mut out: Vec<TaggedImage> = images
            .iter()
            .filter(|i| i.state() == Some(&ImageState::Available))
            .filter_map(tagged_image)
            .collect();
        out.sort_by(|a, b| {
            (&a.image, &a.created_at, &a.ami_id).cmp(&(&b.image, &b.created_at, &b.ami_id))
        });
        Ok(out)
    }

    /// DescribeImages, every page.
    pub(super) async fn describe_images(
        &self,
        owners: &[String],
        filters: Vec<Filter>,
        resource: &str,
    ) -> Result<Vec<AmiImage>, AwsError> {
        let mut pages = self
            .client
            .describe_images()
            .set_owners((!owners.is_empty()).then(|| owners.to_vec()))
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api_error("DescribeImages", resource, e))?;
            out.extend(page.images().iter().cloned());
        }
        Ok(out)
    }

    /// CreateTags on one resource.
    pub(super) async fn tag(
        &self,
        resource: &str,
        tags: &[(String, String)],
    ) -> Result<(), AwsError> {
        if tags.is_empty() {
            return Ok(());
        }
        self.client
            .create_tags()
            .resources(resource)
            .set_tags(Some(tags.iter().map(|(k, v)| tag(k, v)).collect()))
            .send()
            .await
            .map_err(|e| api_error("CreateTags", resource, e))?;
        Ok(())
    }

    /// DeleteTags of `keys` (whatever their values) on one resource.
    pub(super) async fn untag(&self, resource: &str, keys: &[&str]) -> Result<(), AwsError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.client
            .delete_tags()
            .resources(resource)
            .set_tags(Some(
                keys.iter()
                    .map(|k| Tag::builder().key(*k).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| api_error("DeleteTags", resource, e))?;
        Ok(())
    }
}

/// The tags an AMI gets after a build: `Name`, the user's tags, then imgraph's own (which
/// the user's cannot override).
pub(crate) struct TagSet(BTreeMap<String, String>);

impl TagSet {
    pub(crate) fn for_image(image: &Image, version: &str, key: &str) -> TagSet {
        let mut tags = BTreeMap::new();
        tags.insert("Name".to_string(), format!("{}-{version}", image.name));
        for (k, v) in &image.tags {
            tags.insert(k.clone(), v.clone());
        }
        tags.insert(TAG_IMAGE.to_string(), image.name.clone());
        tags.insert(TAG_VERSION.to_string(), version.to_string());
        tags.insert(TAG_KEY.to_string(), key.to_string());
        tags.insert(
            TAG_STATUS.to_string(),
            ReleaseStatus::Candidate.as_str().to_string(),
        );
        TagSet(tags)
    }

    pub(crate) fn pairs(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

pub(super) fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_string).collect()))
        .build()
}

pub(super) fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

pub(super) fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Orders images oldest to newest: creation date, then name, then id.
fn newest_order(a: &AmiImage, b: &AmiImage) -> std::cmp::Ordering {
    (a.creation_date(), a.name(), a.image_id()).cmp(&(b.creation_date(), b.name(), b.image_id()))
}

fn tagged_image(i: &AmiImage) -> Option<TaggedImage> {
    let tags = i.tags();
    Some(TaggedImage {
        ami_id: i.image_id()?.to_string(),
        image: tag_value(tags, TAG_IMAGE)?.to_string(),
        version: tag_value(tags, TAG_VERSION).unwrap_or_default().to_string(),
        key: tag_value(tags, TAG_KEY).unwrap_or_default().to_string(),
        status: tag_value(tags, TAG_STATUS).map(str::to_string),
        created_at: i.creation_date().map(str::to_string),
        delivered: {
            let mut envs: Vec<String> = tags
                .iter()
                .filter_map(|t| {
                    t.key()?
                        .strip_prefix(TAG_DELIVERED_PREFIX)
                        .map(str::to_string)
                })
                .collect();
            envs.sort();
            envs
        },
        user_tags: {
            let image = tag_value(tags, TAG_IMAGE).unwrap_or_default();
            let version = tag_value(tags, TAG_VERSION).unwrap_or_default();
            let default_name = format!("{image}-{version}");
            tags.iter()
                .filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))
                .filter(|(k, v)| !(is_own_tag(k) || (*k == "Name" && *v == default_name.as_str())))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        },
    })
}

/// Tags imgraph itself sets and reads (never the user's to set or remove).
pub(super) fn is_own_tag(key: &str) -> bool {
    key.starts_with("imgraph:") || key == TAG_STATUS
}

/// "owned by amazon named `amzn2-*` tagged {a=b}" for messages.
fn describe_query(
    owners: &[String],
    name: Option<&str>,
    tags: &BTreeMap<String, String>,
) -> String {
    let mut s = if owners.is_empty() {
        "owned by anyone".to_string()
    } else {
        format!("owned by {}", owners.join(", "))
    };
    if let Some(n) = name {
        s.push_str(&format!(" named `{n}`"));
    }
    if !tags.is_empty() {
        let t: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!(" tagged {{{}}}", t.join(", ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_description_names_owners_pattern_and_tags() {
        let mut tags = BTreeMap::new();
        tags.insert("Release_Status".to_string(), "Ready".to_string());
        tags.insert("imgraph:image".to_string(), "base".to_string());
        assert_eq!(
            describe_query(&["self".into()], Some("base-*"), &tags),
            "owned by self named `base-*` tagged {Release_Status=Ready, imgraph:image=base}"
        );
        assert_eq!(
            AwsError::NoSourceMatch {
                query: describe_query(&["amazon".into()], Some("amzn2-*"), &BTreeMap::new())
            }
            .to_string(),
            "find a source AMI: no available image owned by amazon named `amzn2-*`"
        );
    }

    #[test]
    fn the_newest_image_wins_and_ties_go_to_the_later_name() {
        let img = |id: &str, name: &str, date: &str| {
            AmiImage::builder()
                .image_id(id)
                .name(name)
                .creation_date(date)
                .build()
        };
        let images = [
            img("ami-1", "amzn2-2018", "2024-01-01T00:00:00.000Z"),
            img("ami-2", "amzn2-2026", "2024-01-01T00:00:00.000Z"),
            img("ami-3", "amzn2-2020", "2023-06-01T00:00:00.000Z"),
        ];
        let newest = images.iter().max_by(|a, b| newest_order(a, b)).unwrap();
        assert_eq!(newest.image_id(), Some("ami-2"));
    }

    #[test]
    fn imgraph_tags_cannot_be_overridden_by_user_tags() {
        let project = crate::config::load_str(
            std::path::Path::new("."),
            "imgraph.kdl",
            r#"imgraph version=1
provider "aws" { region "us-east-1"; }
source "al2" { aws owner="amazon" name="amzn2-*"; }
image "web" {
    from "al2"
    build "ec2" { run "true"; }
    tags { Team "platform"; Name "web-server"; Release_Status "Ready"; }
}
"#,
        )
        .unwrap();
        let tags = TagSet::for_image(project.image("web").unwrap(), "1.0.3", "k1").pairs();
        let get = |k: &str| tags.iter().find(|(t, _)| t == k).map(|(_, v)| v.as_str());
        assert_eq!(get("Name"), Some("web-server"));
        assert_eq!(get("Team"), Some("platform"));
        assert_eq!(get(TAG_STATUS), Some("Candidate"));
        assert_eq!(get(TAG_IMAGE), Some("web"));
        assert_eq!(get(TAG_VERSION), Some("1.0.3"));
        assert_eq!(get(TAG_KEY), Some("k1"));
    }
}
