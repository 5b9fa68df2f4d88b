"""The seed article's customer payload, numbered so that every customer is new."""

from __future__ import annotations

import copy
from typing import Any

SEED_CUSTOMER: dict[str, Any] = {
    "customer": {
        "email": "async-jdoe1@example.com",
        "firstname": "Jane-async1",
        "lastname": "Doe-async1",
        "addresses": [
            {
                "defaultShipping": True,
                "defaultBilling": True,
                "firstname": "Jane",
                "lastname": "Doe",
                "region": {"regionCode": "NY", "region": "New York", "regionId": 43},
                "postcode": "10755",
                "street": ["123 Oak Ave"],
                "city": "Purchase",
                "telephone": "512-555-1111",
                "countryId": "US",
            }
        ],
    },
    "password": "Password1",
}


def seed_customer(n: int, mode: str = "async") -> dict[str, Any]:
    """Customer ``n`` of the seed experiment: async-jdoe<n>@example.com, Jane-async<n>."""
    body = copy.deepcopy(SEED_CUSTOMER)
    body["customer"]["email"] = f"{mode}-jdoe{n}@example.com"
    body["customer"]["firstname"] = f"Jane-{mode}{n}"
    body["customer"]["lastname"] = f"Doe-{mode}{n}"
    return body
