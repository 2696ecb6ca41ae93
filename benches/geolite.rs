//! The record shape of a GeoLite2-Country database, as the GeoIP bench and the load harness's
//! database writer (`load/mmdb.rs`) write it with mmdb-writer: the fields nginx's geoip2 module
//! and registry-edge read, with GeoLite2's ids and names beside them.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Serialize)]
pub struct Record {
    pub continent: Continent,
    pub country: Country,
    pub registered_country: Country,
}

#[derive(Serialize)]
pub struct Continent {
    pub code: String,
    pub geoname_id: u32,
    pub names: BTreeMap<String, String>,
}

#[derive(Serialize)]
pub struct Country {
    pub geoname_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_in_european_union: Option<bool>,
    pub iso_code: String,
    pub names: BTreeMap<String, String>,
}
