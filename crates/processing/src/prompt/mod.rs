//! A1111's prompt syntax: attention weights, `BREAK`, `AND` composition, and prompt-editing schedules.

mod attention;
mod extra_networks;
mod multicond;
mod pychar;
mod schedule;

pub use attention::{BREAK_TEXT, BREAK_WEIGHT, WeightedText, parse_attention};
pub use extra_networks::{
    ExtraNetworkCall, LoraCall, LoraCallError, parse_extra_network_prompts, parse_extra_networks,
};
pub use multicond::{MulticondList, SubPrompt, multicond_prompt_list, split_and};
pub use schedule::{ScheduleSteps, prompt_schedules};

#[cfg(test)]
mod tests;
