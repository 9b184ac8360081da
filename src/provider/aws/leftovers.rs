//! Instances imgraph left running that no ledger knows (a lost state file): found by the
//! tags every instance carries and terminated.

use aws_sdk_ec2::types::Filter;

use super::{
    api_error, filter, tag_value, AwsError, AwsProvider, LIVE_STATES, TAG_PROJECT, TAG_PURPOSE,
    TAG_RUN,
};
use crate::provider::ProviderError;

impl AwsProvider {
    /// Terminates pending, running, stopping and stopped instances tagged
    /// `imgraph:purpose` (of this project, when scoped) whose `imgraph:run` is not
    /// `keep_run`: leftovers of killed runs. Returns the instance ids terminated.
    pub async fn terminate_tagged_leftovers(
        &self,
        keep_run: Option<i64>,
    ) -> Result<Vec<String>, ProviderError> {
        let mut filters = vec![
            filter("tag-key", [TAG_PURPOSE]),
            filter("instance-state-name", LIVE_STATES.iter().copied()),
        ];
        if let Some(p) = &self.project {
            filters.push(filter(&format!("tag:{TAG_PROJECT}"), [p.as_str()]));
        }
        let keep = keep_run.map(|r| r.to_string());
        let instances = self
            .describe_instances(filters, &format!("instances tagged {TAG_PURPOSE}"))
            .await?;
        let ids: Vec<String> = instances
            .iter()
            .filter(|i| keep.is_none() || tag_value(i.tags(), TAG_RUN) != keep.as_deref())
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        Ok(self.terminate(&ids).await?)
    }

    /// DescribeInstances, every page, flattened.
    pub(super) async fn describe_instances(
        &self,
        filters: Vec<Filter>,
        resource: &str,
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>, AwsError> {
        let mut pages = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api_error("DescribeInstances", resource, e))?;
            for r in page.reservations() {
                out.extend(r.instances().iter().cloned());
            }
        }
        Ok(out)
    }
}
