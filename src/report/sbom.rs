//! The SBOM of an image version: a CycloneDX 1.5 JSON document built with the
//! `cyclonedx-bom` crate and checked by its validator before it is written.
//!
//! The image itself is the document's subject (`metadata.component`, type `container`,
//! named and versioned as in the registry, its artifact id as a property); its
//! distribution (os-release) is an `operating-system` component; every installed package
//! is a `library` component whose `bom-ref` is its package URL
//! (`pkg:deb/debian/libssl3@3.0.15-1~deb12u1?arch=amd64&distro=debian-12`, as the purl
//! spec writes deb and apk packages). The document is a function of the version: its
//! serial number is derived from the artifact id and version and its timestamp is the
//! build time, so writing it twice gives the same bytes.

use cyclonedx_bom::models::component::Classification;
use cyclonedx_bom::models::metadata::Metadata;
use cyclonedx_bom::models::property::{Properties, Property};
use cyclonedx_bom::models::tool::{Tool, Tools};
use cyclonedx_bom::prelude::*;

use super::packages::VersionContents;
use crate::packages::{Manager, OsRelease, Package};

/// The SBOM could not be made: a value imgraph recorded is not one CycloneDX accepts.
#[derive(Debug, thiserror::Error)]
#[error("write the SBOM of {image} {version}: {detail}")]
pub struct SbomError {
    pub image: String,
    pub version: String,
    pub detail: String,
}

/// The package URL of an installed package (purl spec, types `deb` and `apk`).
pub fn package_url(p: &Package, os: &OsRelease) -> Result<String, String> {
    let kind = match p.manager {
        Manager::Dpkg => "deb",
        Manager::Apk => "apk",
    };
    let mut builder = purl::GenericPurlBuilder::new(kind.to_string(), p.name.as_str())
        .with_version(p.version.as_str());
    if let Some(id) = &os.id {
        builder = builder.with_namespace(id.as_str());
    }
    if !p.arch.is_empty() {
        builder = builder
            .with_qualifier("arch", p.arch.as_str())
            .map_err(|e| e.to_string())?;
    }
    if let (Some(id), Some(v)) = (&os.id, &os.version_id) {
        builder = builder
            .with_qualifier("distro", format!("{id}-{v}"))
            .map_err(|e| e.to_string())?;
    }
    builder
        .build()
        .map(|purl| purl.to_string())
        .map_err(|e| e.to_string())
}

/// A UUID-shaped serial number that only depends on what it names.
fn serial_number(artifact_id: &str, version: &str) -> String {
    let hash = blake3::hash(format!("imgraph-sbom\0{artifact_id}\0{version}").as_bytes());
    let hex = hash.to_hex();
    // Version nibble 8 ("custom", RFC 9562) and the RFC variant bits.
    let variant = ["8", "9", "a", "b"][usize::from(hash.as_bytes()[8] & 3)];
    format!(
        "urn:uuid:{}-{}-8{}-{variant}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// The CycloneDX 1.5 JSON document of one image version.
pub fn cyclonedx_json(c: &VersionContents) -> Result<String, SbomError> {
    let (r, inv) = (&c.record, &c.inventory);
    let fail = |detail: String| SbomError {
        image: r.version.image.clone(),
        version: r.version.version.clone(),
        detail,
    };

    let mut subject = Component::new(
        Classification::Container,
        &r.version.image,
        &r.version.version,
        Some(format!("imgraph:{}@{}", r.version.image, r.version.version)),
    );
    subject.properties = Some(Properties(vec![
        Property::new("imgraph:artifact-id", &r.version.artifact_id),
        Property::new("imgraph:provider", &r.version.provider),
    ]));

    let mut components = Vec::with_capacity(inv.packages.len() + 1);
    if let Some(id) = &inv.os.id {
        let mut os = Component::new(
            Classification::OperatingSystem,
            id,
            inv.os.version_id.as_deref().unwrap_or(""),
            Some(format!("os:{id}")),
        );
        if inv.os.version_id.is_none() {
            os.version = None;
        }
        os.description = inv.os.pretty_name.as_deref().map(NormalizedString::new);
        components.push(os);
    }
    for p in &inv.packages {
        let purl = package_url(p, &inv.os)
            .map_err(|e| fail(format!("package `{}` {}: {e}", p.name, p.version)))?;
        let mut component = Component::new(
            Classification::Library,
            &p.name,
            &p.version,
            Some(purl.clone()),
        );
        component.purl = Some(
            purl.parse::<Purl>()
                .map_err(|()| fail(format!("package URL `{purl}`")))?,
        );
        let mut props = vec![Property::new("imgraph:package-manager", p.manager.as_str())];
        if let Some(src) = &p.source {
            props.push(Property::new("imgraph:source-package", src));
        }
        component.properties = Some(Properties(props));
        components.push(component);
    }

    let timestamp = DateTime::try_from(super::timestamp(r.version.built_at))
        .map_err(|e| fail(format!("build time: {e}")))?;
    let bom = Bom {
        serial_number: Some(
            UrnUuid::new(serial_number(&r.version.artifact_id, &r.version.version))
                .map_err(|e| fail(format!("serial number: {e:?}")))?,
        ),
        metadata: Some(Metadata {
            timestamp: Some(timestamp),
            tools: Some(Tools::List(vec![Tool::new(
                "imgraph",
                "imgraph",
                env!("CARGO_PKG_VERSION"),
            )])),
            component: Some(subject),
            ..Metadata::default()
        }),
        components: Some(Components(components)),
        spec_version: SpecVersion::V1_5,
        ..Bom::default()
    };
    let checked = bom.validate_version(SpecVersion::V1_5);
    if !checked.passed() {
        return Err(fail(format!("it does not validate: {checked:?}")));
    }
    let mut out = Vec::new();
    bom.output_as_json_v1_5(&mut out)
        .map_err(|e| fail(e.to_string()))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
