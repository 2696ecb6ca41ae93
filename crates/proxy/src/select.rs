//! Which upstream serves a request. Data requests go to exactly the region that signed their URL;
//! the choice between regions is made on the login side: the region the `regions` table gives
//! for the client's country or continent, else `local_region`, then the other regions in declared
//! order, then the global login server as last resort. A region takes login-side requests only
//! while its regional endpoint and its data endpoint (if it has one) have a usable peer, so that
//! a client's retry through the login host lands on a region that can serve the bytes.

use registry_edge_config::Config;

use crate::upstream::{Pool, PoolId, Upstreams};

#[derive(Debug)]
struct Rule {
    countries: Vec<[u8; 2]>,
    continents: Vec<[u8; 2]>,
    /// Index into `registry.regional_endpoints`.
    regional: usize,
}

#[derive(Debug)]
pub struct Selector {
    rules: Vec<Rule>,
    local: Option<usize>,
    /// For each regional endpoint, the data endpoint of the same region.
    data_of: Vec<Option<usize>>,
}

/// The plan for one request: pools in order of preference, and the preferred region's regional
/// endpoint (to count failovers away from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub pools: Vec<PoolId>,
    pub preferred: Option<usize>,
}

impl Selector {
    pub fn new(config: &Config) -> Selector {
        let r = &config.registry;
        let regional_index =
            |name: &str| r.regional_endpoints.iter().position(|e| e.region == name);
        let rules = config
            .regions
            .iter()
            .filter_map(|rule| {
                Some(Rule {
                    countries: rule.countries.iter().map(|c| c.bytes()).collect(),
                    continents: rule
                        .continents
                        .iter()
                        .map(|k| {
                            let b = k.code().as_bytes();
                            [b[0], b[1]]
                        })
                        .collect(),
                    regional: regional_index(&rule.region)?,
                })
            })
            .collect();
        Selector {
            rules,
            local: config.local_region.as_deref().and_then(regional_index),
            data_of: r
                .regional_endpoints
                .iter()
                .map(|e| r.data_endpoints.iter().position(|d| d.region == e.region))
                .collect(),
        }
    }

    /// The region the client belongs to, by the table, else the local region.
    pub fn preferred(&self, country: Option<[u8; 2]>, continent: Option<[u8; 2]>) -> Option<usize> {
        self.rules
            .iter()
            .find(|r| {
                country.is_some_and(|c| r.countries.contains(&c))
                    || continent.is_some_and(|c| r.continents.contains(&c))
            })
            .map(|r| r.regional)
            .or(self.local)
    }

    pub fn login_plan(
        &self,
        ups: &Upstreams,
        country: Option<[u8; 2]>,
        continent: Option<[u8; 2]>,
    ) -> Plan {
        let preferred = self.preferred(country, continent);
        let available = |i: usize| {
            let usable = |id| ups.get(id).is_some_and(Pool::has_usable_peer);
            usable(PoolId::Regional(i)) && self.data_of[i].is_none_or(|d| usable(PoolId::Data(d)))
        };
        let mut pools = Vec::with_capacity(ups.regional.len() + 1);
        let order = preferred
            .into_iter()
            .chain((0..ups.regional.len()).filter(|i| Some(*i) != preferred));
        for i in order {
            if available(i) {
                pools.push(PoolId::Regional(i));
            }
        }
        pools.push(PoolId::Login);
        Plan { pools, preferred }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn config() -> Config {
        let yaml = r#"version: 1
listeners: [{ address: "127.0.0.1:1" }]
registry:
  login_server: reg.azurecr.io
  public_host: acr.example.com
  regional_endpoints:
    - { region: eastus, endpoint: reg.eastus.geo.azurecr.io, peers: ["192.0.2.1:443"] }
    - { region: westeurope, endpoint: reg.westeurope.geo.azurecr.io, peers: ["192.0.2.2:443"] }
    - { region: japaneast, endpoint: reg.japaneast.geo.azurecr.io, peers: ["192.0.2.3:443"] }
  data_endpoints:
    - { region: eastus, endpoint: reg.eastus.data.azurecr.io, public_host: data.example.com, peers: ["192.0.2.11:443"] }
    - { region: westeurope, endpoint: reg.westeurope.data.azurecr.io, public_host: data.example.com, peers: ["192.0.2.12:443"] }
local_region: westeurope
regions:
  - { region: eastus, countries: [US, CA], continents: [SA] }
  - { region: japaneast, continents: [AS, OC] }
geoip: { database: /x.mmdb }
"#;
        crate::testing::config(yaml)
    }

    fn cc(s: &str) -> Option<[u8; 2]> {
        let b = s.as_bytes();
        Some([b[0], b[1]])
    }

    #[test]
    fn nearest_region_then_the_others_then_the_login_server() {
        let c = config();
        let metrics = Metrics::new().unwrap();
        let ups = Upstreams::new(&c, &metrics).unwrap();
        let s = Selector::new(&c);
        use PoolId::*;
        let plan = s.login_plan(&ups, cc("US"), cc("NA"));
        assert_eq!(
            plan.pools,
            vec![Regional(0), Regional(1), Regional(2), Login]
        );
        assert_eq!(plan.preferred, Some(0));
        assert_eq!(s.login_plan(&ups, cc("BR"), cc("SA")).pools[0], Regional(0));
        assert_eq!(s.login_plan(&ups, cc("JP"), cc("AS")).pools[0], Regional(2));
        // No rule: the local region first.
        assert_eq!(s.login_plan(&ups, cc("DE"), cc("EU")).pools[0], Regional(1));
        assert_eq!(s.login_plan(&ups, None, None).pools[0], Regional(1));

        // A region whose data endpoint has no usable peer takes no login-side requests.
        ups.get(Data(0))
            .unwrap()
            .back_off("192.0.2.11:443".parse().unwrap());
        assert_eq!(
            s.login_plan(&ups, cc("US"), cc("NA")).pools,
            vec![Regional(1), Regional(2), Login]
        );
        // Nor one whose regional endpoint is down.
        ups.get(Regional(1))
            .unwrap()
            .back_off("192.0.2.2:443".parse().unwrap());
        assert_eq!(
            s.login_plan(&ups, cc("US"), cc("NA")).pools,
            vec![Regional(2), Login]
        );
    }
}
