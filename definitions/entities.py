"""The things our features describe."""

from features import Entity, Int64

card = Entity(join_keys={"card_id": Int64}, description="A payment card.")
merchant = Entity(join_keys={"merchant_id": Int64}, description="A merchant accepting card payments.")
