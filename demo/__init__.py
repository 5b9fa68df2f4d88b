"""A small Magento 2 look-alike shop: the upstream for end-to-end tests and demos."""
